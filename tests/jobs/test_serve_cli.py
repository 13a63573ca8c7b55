"""`stf serve` as a user runs it: a second driver on the test cluster, answering, stopped by Ctrl-C (SIGINT)."""

import os
import signal
import subprocess

import pytest
import requests
from support.serve_cli import serve_spec, start_serve, wait_for_models


@pytest.mark.slow  # ~17 s on 2 cores: a CLI process interrupted (`make test-slow`, and CI)
def test_stf_serve_command_serves_until_interrupted(ray_local, tmp_path):
    spec, port = serve_spec(tmp_path, extra="model_id: cli-model\n")
    proc = start_serve(spec, {**os.environ, "RAY_ADDRESS": ray_local})
    try:
        models = wait_for_models(proc, port)
        assert models is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert models["data"][0]["id"] == "cli-model"
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        reply = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)  # API only: no chat page
        assert page.status_code == 404 and "ui: false" in page.json()["error"]["message"]
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"stf serve did not stop on Ctrl-C:\n{proc.communicate()[0][-3000:]}")
        assert code == 0, proc.stdout.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        from ray import serve

        serve.shutdown()  # whatever happened above, no replica keeps CPUs from later tests
    # Serve was shut down with the command: the port no longer answers.
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
        answered = True
    except requests.RequestException:
        answered = False
    assert not answered
