"""`lss describe` keeps `concurrency` requests in flight: the worker pool against tests/fake_llm.py."""

from __future__ import annotations

from pathlib import Path

from fake_llm import FakeLLM

from lss_cli.config import DescribeConfig
from lss_cli.describe.run import run_describe

KEY_ENV = {"OPENAI_API_KEY": "lss-test-pool-key"}


def test_the_pool_fills_as_soon_as_the_probe_is_answered(tmp_path: Path):
    """The first request goes out alone (it settles how requests are sent); the moment it is
    answered, every worker sends at once. The workers that queued behind the probe used to go one
    at a time, a full round trip each: here only 2 were ever in flight and the server waited
    `gather_timeout` for the other 2."""
    concurrency = 4
    names = [f"class {i}" for i in range(concurrency + 1)]  # the probe, then one class per worker
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names) + "\n")
    with FakeLLM(per_class=3, gather=concurrency, gather_timeout=5.0) as server:
        cfg = DescribeConfig(labels=str(labels), out=str(tmp_path / "d.jsonl"), per_class=3, base_url=server.base_url,
                             concurrency=concurrency, timeout=30.0)
        s = run_describe(cfg, env=KEY_ENV)
    assert (s.done, s.calls, s.retries) == (len(names), len(names), 0)
    assert server.max_in_flight == concurrency
