"""The profiler table's "speed-up / MACs limit" column."""

from __future__ import annotations

from evaluation.profiler import ModelProfile, Timing, table_rows


def _profile(name: str, macs_per_second: float, median_s: float) -> ModelProfile:
    timing = Timing(device="cpu", precision="fp32", threads=1, batch_size=1, audio_seconds=10.0, warmup=1, repeats=3,
                    median_s=median_s, min_s=median_s, max_s=median_s, peak_memory_mb=None, activation_peak_mb=None)
    return ModelProfile(name=name, source=name, family="wav2vec2", num_layers=2, hidden_dim=8, params=100, nonzero_params=100,
                        weight_sparsity=0.0, macs_method="formula", seconds=10.0, macs=int(macs_per_second * 10),
                        macs_per_second=macs_per_second, timings=[timing])


def test_speed_up_over_macs_limit() -> None:
    # A quarter of the MACs (limit 4x) but only 3x faster: 0.75 of the limit.
    header, rows = table_rows([_profile("teacher", 8e9, 1.2), _profile("student", 2e9, 0.4)])
    column = header.index("cpu speed-up / MACs limit")
    assert rows[0][column] == "1.00"
    assert rows[1][header.index("cpu speed-up")] == "3.00"
    assert rows[1][column] == "0.75"
