"""The fast upstream: nginx answering ``return 200`` with a fixed chat.completion body.

Why not only the project's fake OpenAI (h11, asyncio)? It spends about 400 µs of CPU
per request; on two shared cores that is more than Envoy and the ext_authz together,
so with it as the upstream every path runs at the fake's speed and "Envoy alone"
measures the fake, not Envoy. nginx costs a few tens of µs, like a remote upstream
that costs nothing here. The fake is still started: it is the upstream for the SSE
measurements (nginx cannot stream timed chunks) and a reference row.

nginx runs as one process (``master_process off``), so its PID is the one to measure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.processes import ManagedProcess, wait_for_http

# The same shape (and about the same size) as the fake's non-streaming answer.
CHAT_COMPLETION = (
    '{"id":"chatcmpl-bench0000000000000000000000","object":"chat.completion",'
    '"created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":'
    '{"role":"assistant","content":"Hello there! How can I help you today?",'
    '"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":9,"completion_tokens":10,"total_tokens":19,'
    '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
    '"service_tier":"default","system_fingerprint":"fp_bench"}'
)


def ensure_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("nginx is not installed and apt-get is not available: install nginx")
    print("bench: nginx not found; running: apt-get install -y nginx-light", flush=True)
    if subprocess.run([apt, "install", "-y", "nginx-light"], check=False).returncode != 0:
        print("bench: that failed; running: apt-get update, then the install again", flush=True)
        subprocess.run([apt, "update"], check=True)
        subprocess.run([apt, "install", "-y", "nginx-light"], check=True)
    # The package's own service is not wanted (and, without an init system, not started).
    return "/usr/sbin/nginx"


def nginx_config(work_dir: Path, port: int) -> str:
    temp = work_dir / "nginx-tmp"
    temp.mkdir(parents=True, exist_ok=True)
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {work_dir}/nginx.pid;
error_log {work_dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            add_header x-request-id req_bench always;
            return 200 '{CHAT_COMPLETION}';
        }}
    }}
}}
"""


class NginxUpstream:
    def __init__(self, work_dir: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = work_dir / "nginx.conf"
        config.write_text(nginx_config(work_dir, port), encoding="utf-8")
        self.process = ManagedProcess(
            [ensure_nginx(), "-c", str(config), "-p", str(work_dir), "-e", "stderr"],
            {},
            work_dir / "nginx.log",
            name="nginx",
        )

    def start(self) -> NginxUpstream:
        self.process.start()
        wait_for_http(f"{self.url}/v1/models", timeout=15, process=self.process)
        return self

    def stop(self) -> None:
        self.process.stop()
