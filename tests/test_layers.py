"""The layers of ARCHITECTURE.md hold: imports point down only (core < data < ml < services < faces), and the faces
(the CLI, the HTTP API, the MQTT ingester) do not import each other (the CLI may start any of them). Every import is
read from the source, including those inside functions."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'iot2ml'
LAYER = {'config': 0, 'schema': 0, 'plots': 0, 'errors': 0, '_io': 0, '_lazy': 0,   # core
         'lake': 1, 'sim': 1,                                                      # data
         'ml': 2,                                                                  # ml
         'ingest': 3, 'serve.scoring': 3, 'serve.runtime': 3,                      # services
         'serve.http': 4, 'serve.mqtt': 4, 'cli': 4}                               # faces

def _layer(mod:str):
    "(layer, room) of module `mod` (dotted, without 'iot2ml.'), or (None, None) for the package plumbing."
    parts = mod.split('.')
    for key in ('.'.join(parts[:2]), parts[0]):
        if key in LAYER: return LAYER[key], key
    return None, None

def _imports(path:Path, me:str):
    "The iot2ml modules `path` (module `me`) imports, with their line numbers."
    pkg = me.split('.') if path.name == '__init__.py' else me.split('.')[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[:len(pkg) - node.level + 1]
            yield '.'.join(base + ([node.module] if node.module else [])), node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('iot2ml.'):
            yield node.module[len('iot2ml.'):], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith('iot2ml.'): yield a.name[len('iot2ml.'):], node.lineno

def test_imports_point_down_only():
    wrong = []
    for path in sorted(PKG.rglob('*.py')):
        me = '.'.join(path.relative_to(PKG).with_suffix('').parts).removesuffix('.__init__')
        mine, room = _layer(me)
        if mine is None: continue
        for other, line in _imports(path, me):
            theirs, their_room = _layer(other)
            if theirs is None: continue
            face_to_face = mine == theirs == 4 and room != their_room and room != 'cli'
            if theirs > mine or face_to_face:
                wrong.append(f"iot2ml/{path.relative_to(PKG)}:{line} ({room}) imports {other}")
    assert not wrong, "imports that point up (or from one face to another):\n" + '\n'.join(wrong)

def test_every_room_has_a_layer():
    "A new subpackage must be placed in a layer here (and in ARCHITECTURE.md) before it counts."
    rooms = {p.name for p in PKG.iterdir() if p.is_dir() and (p/'__init__.py').exists()}
    assert rooms <= {k.split('.')[0] for k in LAYER}, rooms
