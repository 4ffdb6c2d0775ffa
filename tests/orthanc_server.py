"""A real Orthanc (Debian's `orthanc` package) for the DICOM node tests, and dcmtk's storescu/storescp as the
scanner and the planning system (not a test module itself). .ci/run installs both with apt."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

NODE_AET = "DGCFNODE"
SCANNER_AET = "MRSCANNER"
TPS_AET = "TPS"
USER, PASSWORD = "dgcf", "s3cret-Pa55"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{program} not found: install Debian's orthanc and dcmtk (apt-get install -y orthanc dcmtk), "
                    f"as .ci/run does")
    return found


class OrthancServer:
    """Orthanc on free localhost ports with authentication, a checked called AE title, a whitelist of
    modalities allowed to store (the scanner) and a TPS it may send to; storage in `folder`."""

    def __init__(self, folder: Path, tps_port: int | None = None, http_port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = http_port or free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        modalities = {"scanner": {"AET": SCANNER_AET, "Host": "127.0.0.1", "Port": free_port(),
                                  "AllowStore": True, "AllowEcho": True, "AllowFind": False, "AllowMove": False,
                                  "AllowGet": False}}
        if tps_port is not None:
            modalities["tps"] = {"AET": TPS_AET, "Host": "127.0.0.1", "Port": tps_port, "AllowStore": False,
                                 "AllowEcho": False}
        config = {
            "Name": "dgcf-test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": NODE_AET,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowFind": False, "DicomAlwaysAllowMove": False, "DicomAlwaysAllowGet": False,
            "DicomCheckModalityHost": True, "DicomModalities": modalities, "DicomModalitiesInDatabase": False,
            "StableAge": 1, "UserMetadata": {"dgcf": 1024}, "OverwriteInstances": False, "Plugins": [],
            "SaveJobs": False, "HttpTimeout": 60,
        }
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.process = None
        self.start()

    def start(self) -> None:
        self.log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([need("Orthanc"), str(self.config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert self.process.poll() is None, (self.folder / "orthanc.log").read_text()[-2000:]
            assert time.time() < deadline, "Orthanc did not answer within 60 s"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def get(self, path: str, **kwargs):
        response = requests.get(f"{self.url}{path}", auth=(USER, PASSWORD), timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("Content-Type", "") else response.content

    def password_file(self, folder: Path) -> Path:
        path = Path(folder) / "orthanc.password"
        path.write_text(PASSWORD + "\n")
        path.chmod(0o600)
        return path

    def store(self, files, aet: str = SCANNER_AET, called: str = NODE_AET) -> subprocess.CompletedProcess:
        """storescu, as a scanner sends a series."""
        return subprocess.run([need("storescu"), "-aet", aet, "-aec", called, "127.0.0.1", str(self.dicom_port),
                               *map(str, files)], capture_output=True, text=True, timeout=120)

    def wait_stable(self, count: int, timeout: float = 60) -> None:
        """Until `count` series have become stable (Orthanc's StableSeries changes)."""
        deadline = time.time() + timeout
        while True:
            changes = self.get("/changes?since=0&limit=10000")["Changes"]
            if sum(c["ChangeType"] == "StableSeries" for c in changes) >= count:
                return
            assert time.time() < deadline, "series never became stable"
            time.sleep(0.2)

    def series_by_modality(self, modality: str) -> list[dict]:
        found = [self.get(f"/series/{s}") for s in self.get("/series")]
        return [s for s in found if s["MainDicomTags"].get("Modality") == modality]

    def metadata(self, series_id: str) -> str | None:
        response = requests.get(f"{self.url}/series/{series_id}/metadata/dgcf", auth=(USER, PASSWORD), timeout=30)
        return response.text if response.status_code == 200 else None


def storescp(folder: Path, port: int) -> subprocess.Popen:
    """dcmtk's storescp as the treatment planning system: stores what it receives in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([need("storescp"), "--aetitle", TPS_AET, "-od", str(folder), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        assert time.time() < deadline, "storescp did not listen"
        time.sleep(0.1)
