"""Two "hosts" on one Linux machine: two network namespaces joined by a veth pair (needs root and `ip`).

Each namespace has its own loopback and one end of the veth pair with a private address (10.213.X.1 and .2/24,
X from this process id) that exists only inside the namespaces, so processes in different namespaces can reach
each other only over that link, as two machines do over a network. Commands run in a namespace with
`ip netns exec` in their own process group, with GLOO_SOCKET_IFNAME set to that namespace's veth end.
`close()` kills every process group started and deletes both namespaces (which removes the veth pair).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str:
    """Why namespaces cannot be made here, or '' when they can be tried."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CI runs the tests as root)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    return ""


class TwoNodes:
    """Node 0 and node 1. `popen(node, argv)` starts `python argv` there; `link(False)` cuts the wire."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.namespaces = [f"clsa{pid}n0", f"clsa{pid}n1"]
        self.ifnames = [f"c{pid}v0", f"c{pid}v1"]  # interface names: 15 characters at most
        subnet = f"10.213.{pid % 250 + 1}"
        self.addresses = [f"{subnet}.1", f"{subnet}.2"]
        self.procs: list[subprocess.Popen] = []

    def open(self) -> TwoNodes:
        """Create both namespaces and the link; on any failure, undo what was made and raise OSError."""
        try:
            for ns in self.namespaces:
                _ip("netns", "add", ns)
            _ip("link", "add", self.ifnames[0], "type", "veth", "peer", "name", self.ifnames[1])
            for ns, ifname, address in zip(self.namespaces, self.ifnames, self.addresses, strict=True):
                _ip("link", "set", ifname, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", ifname)
                _ip("-n", ns, "link", "set", ifname, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as err:
            self.close()
            raise OSError(f"{' '.join(err.cmd)}: {err.stderr.strip()}") from None
        return self

    def popen(self, node: int, argv: list[str], env: dict, cwd: str) -> subprocess.Popen:
        """`python argv` in node's namespace, its own process group, stdout+stderr as text lines."""
        env = dict(env, GLOO_SOCKET_IFNAME=self.ifnames[node])
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespaces[node], sys.executable, *argv], cwd=cwd,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        proc.node = node  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def link(self, up: bool) -> None:
        """Bring node 0's end of the wire up or down (node 1's end stays up: the cable is pulled, not the NIC)."""
        _ip("-n", self.namespaces[0], "link", "set", self.ifnames[0], "up" if up else "down")

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to every process on `node` (the launcher and the workers it spawned), as SLURM signals a job
        step or as a node dies."""
        for pid in self.pids(node):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def pids(self, node: int) -> list[int]:
        """Every process inside node's namespace (torchrun starts its workers in sessions of their own)."""
        out = _ip("netns", "pids", self.namespaces[node], check=False).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        """Kill every process in the namespaces and every group started here, delete the namespaces (the veth pair
        goes with them)."""
        for node in (0, 1):
            for pid in self.pids(node):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            _killpg(proc.pid, signal.SIGKILL)
            try:
                proc.communicate(timeout=30)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        deadline = time.time() + 10
        while self.leftovers() and time.time() < deadline:
            time.sleep(0.2)

    def leftovers(self) -> list[str]:
        """Namespaces, interfaces and live processes of this harness that still exist."""
        names = _ip("netns", "list", check=False).stdout
        links = _ip("-o", "link", "show", check=False).stdout
        left = [ns for ns in self.namespaces if ns in names] + [i for i in self.ifnames if i in links]
        left += [f"process {pid} in {ns}" for node, ns in enumerate(self.namespaces) if ns in names
                 for pid in self.pids(node)]
        for proc in self.procs:
            try:
                os.killpg(proc.pid, 0)
                left.append(f"process group {proc.pid}")
            except ProcessLookupError:
                pass
        return left


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
