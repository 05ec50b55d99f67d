"""Helpers shared by the tests and the benchmarks: `wait_for` (poll until something holds) and `free_port`.

Test modules and bench scripts import them with `from helpers import wait_for, free_port`: pytest puts tests/ on
sys.path for conftest.py (under xdist too), and the bench scripts insert it themselves. conftest.py re-exports them.
"""
import socket, time

def free_port(host:str='127.0.0.1', # the address to bind
             ) -> int:
    "A TCP port of `host` that was free a moment ago."
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]

def _holds(v) -> bool:
    "Whether a polled value counts as done: truthy; a value with no truth value (a DataFrame) when it is not None."
    try: return bool(v)
    except (TypeError, ValueError): return v is not None

def wait_for(cond,                # called until its value holds (truthy); that value is returned
             timeout:float=60,    # seconds: generous, since a loaded 2-core machine is slow and this is no timing test
             what='the condition', # named in the error; a function is called at the timeout (e.g. for a log's tail)
             every:float=0.02,    # seconds between polls
            ):
    "The first value of `cond()` that holds within `timeout` s, else an AssertionError naming `what`."
    end = time.monotonic() + timeout
    while not _holds(v := cond()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(every)
    return v

def time_when(cond,          # polled every 5 ms
              timeout:float, # seconds
              what:str,      # named in the error
             ) -> float:
    ("The `time.time()` at which `cond()` first held (for benchmarks: a fine poll), else an AssertionError naming "
     "`what`.")
    wait_for(cond, timeout, what, every=0.005)
    return time.time()
