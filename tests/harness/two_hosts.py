"""Two real hosts on one machine: two network namespaces joined by a veth pair, an sshd in each.

    with TwoHosts(tmp_dir) as hosts:            # root, `ip netns`, sshd, ssh needed
        hosts.names                             # ("hosta", "hostb"): names ssh (and pdsh) resolve
        hosts.addresses                         # ("10.233.0.1", "10.233.0.2")
        hosts.run_on(0, command, env)           # a process on host 0: `ip netns exec <ns> command`
        hosts.client_env()                      # PATH with the test's ssh first, PDSH_RCMD_TYPE=ssh
        hosts.ssh_logins(1)                     # sessions host 1's sshd accepted so far
        hosts.kill_processes(1, "pretrain_gpt.py")   # SIGKILL host 1's ranks: the host is lost

Each namespace holds one end of the veth pair, renamed INTERFACE inside both, so one
GLOO_SOCKET_IFNAME names the right interface on either host (gloo would otherwise pick the
address of this machine's hostname, which neither namespace can reach). Everything lives
under the test's own directory: host and user keys (ssh-keygen), an sshd config per host
(sshd -f, run inside the namespace with its own tmpfs on /run for sshd's privilege
separation directory, so the machine's /run is untouched), an ssh_config (ssh -F), and
bin/ssh, a wrapper that calls ssh with that config; launchers find it first on PATH
(DeepSpeed's own ssh check, pdsh's ssh module, mpirun's plm_rsh_agent). Nothing reads or
writes ~/.ssh or /etc/ssh. Teardown (also after a failure, also half-way through setup)
kills every process left in the namespaces, sshd included, and deletes them, which removes
the veth pair.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

INTERFACE = "mcore0"
SUBNET = "10.233.0"
NAMES = ("hosta", "hostb")
SSH_PORT = 22
PROGRAMS = ("ip", "sshd", "ssh", "ssh-keygen")


def unavailable_reason() -> Optional[str]:
    """Why this machine cannot make the two hosts (one sentence), or None."""
    if os.geteuid() != 0:
        return "two network namespaces need root (ip netns add)"
    missing = [name for name in PROGRAMS if shutil.which(name) is None and not os.path.exists(f"/usr/sbin/{name}")]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install iproute2 openssh-server openssh-client)"
    probe = f"mcprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _check(command: Sequence[str]) -> None:
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")


class TwoHosts:
    def __init__(self, directory: str):
        self.directory = directory
        tag = secrets.token_hex(3)          # unique to this run: concurrent runs never share a name
        self.namespaces = (f"mcore-{tag}-a", f"mcore-{tag}-b")
        self._veth = (f"mc{tag}a", f"mc{tag}b")
        self.names = NAMES
        self.addresses = tuple(f"{SUBNET}.{i + 1}" for i in range(2))
        self.ssh_config = os.path.join(directory, "ssh_config")
        self.bin = os.path.join(directory, "bin")
        self._made: List[str] = []

    # --- setup ------------------------------------------------------------------------------------------

    def __enter__(self) -> "TwoHosts":
        try:
            self._make_network()
            self._make_keys_and_configs()
            for index in range(2):
                self._start_sshd(index)
            self._wait_for_ssh()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def _make_network(self) -> None:
        for namespace in self.namespaces:
            _check(["ip", "netns", "add", namespace])
            self._made.append(namespace)
        _check(["ip", "link", "add", self._veth[0], "type", "veth", "peer", "name", self._veth[1]])
        for namespace, end, address in zip(self.namespaces, self._veth, self.addresses):
            _check(["ip", "link", "set", end, "netns", namespace])
            inside = ["ip", "netns", "exec", namespace]
            _check([*inside, "ip", "link", "set", end, "name", INTERFACE])
            _check([*inside, "ip", "addr", "add", f"{address}/24", "dev", INTERFACE])
            _check([*inside, "ip", "link", "set", INTERFACE, "up"])
            _check([*inside, "ip", "link", "set", "lo", "up"])

    def _make_keys_and_configs(self) -> None:
        d = self.directory
        for key in ("host_key", "user_key"):
            _check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mcore-test", "-f", os.path.join(d, key)])
        shutil.copy(os.path.join(d, "user_key.pub"), os.path.join(d, "authorized_keys"))
        for index, address in enumerate(self.addresses):
            with open(os.path.join(d, f"sshd_{index}.conf"), "w") as f:
                f.write(f"ListenAddress {address}\nPort {SSH_PORT}\nHostKey {d}/host_key\n"
                        f"AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd_{index}.pid\n"
                        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                        "KbdInteractiveAuthentication no\nUsePAM no\n"
                        "StrictModes no\n"            # the test's tmp directory is not ~/.ssh
                        "AcceptEnv no\nX11Forwarding no\n")
        with open(self.ssh_config, "w") as f:
            for name, address in zip(self.names, self.addresses):
                f.write(f"Host {name}\n  HostName {address}\n")
            f.write(f"Host *\n  User root\n  Port {SSH_PORT}\n  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n"
                    "  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n"
                    "  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n")
        os.makedirs(self.bin, exist_ok=True)
        wrapper = os.path.join(self.bin, "ssh")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec {_program("ssh")} -F {self.ssh_config} "$@"\n')
        os.chmod(wrapper, 0o755)

    def _start_sshd(self, index: int) -> None:
        config = os.path.join(self.directory, f"sshd_{index}.conf")
        log = os.path.join(self.directory, f"sshd_{index}.log")
        # ip netns exec gives the command a private mount namespace: this /run is the namespace's own.
        script = f"mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && exec {_program('sshd')} -f {config} -E {log}"
        _check(["ip", "netns", "exec", self.namespaces[index], "sh", "-c", script])

    def _wait_for_ssh(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = [subprocess.run(self.run_on(0, [os.path.join(self.bin, "ssh"), name, "true"]),
                                   capture_output=True, text=True, timeout=30) for name in self.names]
            if all(d.returncode == 0 for d in done):
                return
            if time.monotonic() > deadline:
                logs = " | ".join(open(os.path.join(self.directory, f"sshd_{i}.log")).read()[-500:] for i in range(2))
                raise RuntimeError(f"ssh to the two hosts failed: {[d.stderr.strip() for d in done]}; sshd: {logs}")
            time.sleep(0.5)

    # --- use --------------------------------------------------------------------------------------------

    def run_on(self, index: int, command: Sequence[str]) -> List[str]:
        """`command` as a process of host `index`."""
        return ["ip", "netns", "exec", self.namespaces[index], *command]

    def client_env(self) -> Dict[str, str]:
        """What a launcher needs to reach the hosts: the ssh wrapper first on PATH, pdsh over ssh."""
        return {"PATH": f"{self.bin}:{os.environ.get('PATH', '')}", "PDSH_RCMD_TYPE": "ssh"}

    def ssh_logins(self, index: int) -> int:
        """How many ssh sessions host `index`'s sshd has accepted so far: a launcher that says it reached
        the host did."""
        with open(os.path.join(self.directory, f"sshd_{index}.log")) as f:
            return f.read().count("Accepted publickey")

    def kill_processes(self, index: int, needle: str) -> int:
        """SIGKILL every process of host `index` whose command line holds `needle` (the host's ranks
        die as if it were lost); how many there were."""
        pids = subprocess.run(["ip", "netns", "pids", self.namespaces[index]], capture_output=True, text=True).stdout
        killed = 0
        for pid in (int(p) for p in pids.split()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle.encode() not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (OSError, ProcessLookupError):
                pass        # gone already
        return killed

    def hostfile(self, slots: int = 1) -> str:
        path = os.path.join(self.directory, "hostfile")
        with open(path, "w") as f:
            f.writelines(f"{name} slots={slots}\n" for name in self.names)
        return path

    # --- teardown ---------------------------------------------------------------------------------------

    def teardown(self) -> None:
        """Kill every process in the namespaces (sshd, sessions, stray ranks), then delete them."""
        for namespace in self._made:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
                for pid in (int(p) for p in pids.split()):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                if pids.strip() and sig == signal.SIGTERM:
                    time.sleep(1)
        for namespace in self._made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self._made = []
        # A veth end still in the root namespace (setup stopped before moving it) goes too.
        subprocess.run(["ip", "link", "del", self._veth[0]], capture_output=True)
