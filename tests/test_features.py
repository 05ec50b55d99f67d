"Batch features over the lake and online features from the latest-state window give the same numbers."
import numpy as np, pandas as pd, pyarrow as pa
import pytest
from iot2ml.ml.features import FeatureSpec, online_features, feature_columns
from iot2ml.lake.store import Lake
from iot2ml.ml.pipeline import example_workspace
from iot2ml.ingest.state import LatestState

@pytest.fixture(scope='module')
def lake():
    ws = example_workspace('prepare')
    return Lake(ws['lake_dir'], ws['reference_dir'], fsync=False)

def test_batch_and_online_features_agree(lake, tmp_path):
    agg = lake.aggregate('telemetry', every='1 hour', tier='processed')
    spec = FeatureSpec(expected=float(agg['count'].quantile(0.9)))
    batch = spec.table(agg)
    # the live path: the same (deduplicated) readings folded into latest state in arrival-sized chunks, then its window
    st = LatestState(tmp_path/'latest.sqlite', bucket='1h', window='30D')
    readings = lake.read('telemetry', tier='processed')
    readings = pa.Table.from_pandas(readings[['device_id', 'sensor', 'ts', 'value']], preserve_index=False)
    for i in range(0, readings.num_rows, 200_000): st.update(readings.slice(i, 200_000))
    newest = agg['ts'].max()
    online = online_features(st.window(sorted(agg['device_id'].unique()), start=newest - spec.history), spec)
    last = batch.groupby(level='device_id').tail(1)
    assert list(online.columns) == list(batch.columns) and len(online) == agg['device_id'].nunique()
    cols = feature_columns(batch)
    assert len(cols) > 300
    # the window holds enough history: real numbers, not NaN
    assert online[cols].notna().to_numpy().mean() > 0.8
    pd.testing.assert_frame_equal(online[cols], last[cols], rtol=1e-7, atol=1e-9)

def test_latest_state_keeps_enough_history_for_the_default_features():
    "The default latest-state window must hold what the default feature params need, or online features go NaN."
    from iot2ml.config import Settings, Params
    p = Params().features
    spec = FeatureSpec(windows=p.windows, normal_window=p.normal_window, lags=p.lags)
    assert pd.Timedelta(Settings().ingest.window) >= spec.history
