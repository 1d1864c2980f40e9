"""What the toolstack keeps in <rundir>/libxl/ so a restarted Domain-0 can go on.

libxl keeps its per-domain state in files too (/var/lib/xen/userdata-*); here
each file is written whole to a temporary name and renamed, so a Domain-0
killed mid-write leaves the old record or the new one, never half of one.

- <domid>.json: the domain's config and the shutdown events already handled
  (rule 2 of the toolstack: an action is applied once, also across restarts).
- pending-<name>.json: a restart begun (old domain destroyed) but not yet
  finished (new domain not created); a new toolstack finishes it.
- restarts.json: recent restart times per name (CLOCK_MONOTONIC is one clock
  for every process on the machine), so a crash loop stays stopped.
"""

import glob
import json
import os
import time


class Records:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _write(self, name: str, data) -> None:
        path = self._path(name)
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)

    def _read(self, name: str, default):
        try:
            with open(self._path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return default

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    # ---- per domain ------------------------------------------------------

    def save(self, domid: int, spec: dict, handled: list[str] | None = None) -> None:
        self._write(f"{domid}.json", {"domid": domid, "spec": spec, "created": time.time(),
                                      "handled": sorted(handled or [])})

    def forget(self, domid: int) -> None:
        self._unlink(f"{domid}.json")

    def domain_files(self) -> list[str]:
        return sorted(p for p in glob.glob(os.path.join(self.dir, "*.json"))
                      if os.path.basename(p)[0].isdigit())

    # ---- restarts in progress ----------------------------------------------

    def begin_restart(self, spec: dict) -> None:
        self._write(f"pending-{spec['name']}.json", spec)

    def end_restart(self, name: str) -> None:
        self._unlink(f"pending-{name}.json")

    def pending_restarts(self) -> list[dict]:
        specs = []
        for path in sorted(glob.glob(os.path.join(self.dir, "pending-*.json"))):
            spec = self._read(os.path.basename(path), None)
            if isinstance(spec, dict):
                specs.append(spec)
            else:
                os.unlink(path)
        return specs

    # ---- crash-loop history --------------------------------------------------

    def restart_history(self) -> dict[str, list[float]]:
        raw = self._read("restarts.json", {})
        if not isinstance(raw, dict):
            return {}
        return {str(k): [float(t) for t in v if isinstance(t, (int, float))]
                for k, v in raw.items() if isinstance(v, list)}

    def save_restart_history(self, history: dict[str, list[float]]) -> None:
        self._write("restarts.json", history)
