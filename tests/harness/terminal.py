"""A command run on a pseudo-terminal, as when a user types at it: its stdin and stdout are
the slave side of os.openpty() (so `sys.stdin.isatty()` is true and the line discipline
echoes and turns Ctrl-D into end of input), and the test reads and writes the master side.

    with Terminal([sys.executable, "tools/generate_text.py", "--load", ckpt]) as term:
        term.expect("prompt> ")
        term.send("清华大学\n")
        shown = term.expect("prompt> ")       # everything printed since the last expect
        term.send("\x04")                     # Ctrl-D
        assert term.wait() == 0

stderr is the terminal too (input() writes its prompt there when stdin is a terminal).
Output is read as it arrives (select on the master), decoded as UTF-8 incrementally, with
the terminal's "\r\n" turned back into "\n".
"""
from __future__ import annotations

import codecs
import os
import select
import subprocess
import time
from typing import Dict, Optional, Sequence


class Terminal:
    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None):
        self._master, slave = os.openpty()
        self.process = subprocess.Popen(list(command), stdin=slave, stdout=slave, stderr=slave,
                                        env=dict(env if env is not None else os.environ, TERM="dumb"), cwd=cwd,
                                        start_new_session=True)
        os.close(slave)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.output = ""          # everything read so far
        self._mark = 0            # where the next expect starts looking
        self._closed = False

    def _read(self, timeout: float) -> bool:
        """Read what is there within `timeout` seconds; False once the child closed the terminal."""
        if self._closed:
            return False
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError:           # EIO: every slave descriptor is closed (the child exited)
            data = b""
        if not data:
            self._closed = True
            return False
        self.output += self._decoder.decode(data).replace("\r\n", "\n")
        return True

    def expect(self, text: str, timeout: float = 60) -> str:
        """Wait until `text` appears after the previous match; returns the output up to and including it."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self._mark:]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 1.0)):
                if text in self.output[self._mark:]:
                    break
                raise AssertionError(f"{text!r} did not appear within {timeout} s (exit {self.process.poll()}); "
                                     f"output: {self.output[self._mark:][-3000:]!r}")
        end = self.output.index(text, self._mark) + len(text)
        shown, self._mark = self.output[self._mark:end], end
        return shown

    def send(self, text: str) -> None:
        os.write(self._master, text.encode("utf-8"))

    def wait(self, timeout: float = 60) -> int:
        """The exit status, reading the output to its end (what is left is `rest()`)."""
        deadline = time.monotonic() + timeout
        while self._read(0.2) and time.monotonic() < deadline:
            pass
        return self.process.wait(timeout=max(deadline - time.monotonic(), 1))

    def rest(self) -> str:
        return self.output[self._mark:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        os.close(self._master)

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
