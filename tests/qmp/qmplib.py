"""A small QMP client for the control-socket tests: line-oriented reading
(popek ends every message with CRLF), events collected while waiting for
answers, every line checked to be one JSON object of a known kind."""
import json
import os
import select
import socket
import subprocess
import time


class Failures(list):
    """A test script's failed checks: check() records and prints one."""

    def check(self, cond, what):
        if not cond:
            self.append(what)
            print(f"FAIL: {what}", flush=True)
        return cond


class ProtocolError(Exception):
    pass


def check_message(line):
    """Parses one line from the server; raises ProtocolError unless it is a
    JSON object that is exactly one of greeting, return, error, event."""
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {line[:200]!r}: {e}")
    if not isinstance(msg, dict):
        raise ProtocolError(f"not an object: {line[:200]!r}")
    kinds = [k for k in ("QMP", "return", "error", "event") if k in msg]
    if len(kinds) != 1:
        raise ProtocolError(f"not one kind of message: {line[:200]!r}")
    if "error" in msg:
        err = msg["error"]
        if not (isinstance(err, dict) and isinstance(err.get("class"), str) and isinstance(err.get("desc"), str)):
            raise ProtocolError(f"malformed error: {line[:200]!r}")
    if "event" in msg:
        ts = msg.get("timestamp")
        if not (isinstance(ts, dict) and isinstance(ts.get("seconds"), int) and isinstance(ts.get("microseconds"), int)):
            raise ProtocolError(f"event without timestamp: {line[:200]!r}")
    return msg


class Client:
    def __init__(self, address, negotiate=True, timeout=10):
        kind, rest = address.split(":", 1)
        if kind == "unix":
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.connect(rest)
        else:
            host, port = rest.rsplit(":", 1)
            self.s = socket.create_connection((host, int(port)))
        self.timeout = timeout
        self.buf = b""
        self.events = []
        self.greeting = self.read(timeout)
        if "QMP" not in self.greeting:
            raise ProtocolError(f"no greeting: {self.greeting}")
        if negotiate:
            r = self.cmd("qmp_capabilities")
            if r != {"return": {}}:
                raise ProtocolError(f"qmp_capabilities: {r}")

    def close(self):
        self.s.close()

    def send_raw(self, data):
        self.s.sendall(data)

    def read(self, timeout=None):
        """The next message (or None at the end of the connection)."""
        end = time.time() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            left = end - time.time()
            if left <= 0:
                raise TimeoutError("no answer from popek")
            r, _, _ = select.select([self.s], [], [], left)
            if not r:
                continue
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf.strip():
                    raise ProtocolError(f"connection ended inside a message: {self.buf[:200]!r}")
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        if not line.endswith(b"\r"):
            raise ProtocolError(f"line not ended by CRLF: {line[:200]!r}")
        return check_message(line.decode("utf-8"))

    def answer(self, timeout=None):
        """The next return or error; events on the way go to self.events."""
        while True:
            m = self.read(timeout)
            if m is None:
                raise ProtocolError("connection closed before the answer")
            if "event" in m:
                self.events.append(m)
                continue
            return m

    def cmd(self, name, arguments=None, id=None):
        req = {"execute": name}
        if arguments is not None:
            req["arguments"] = arguments
        if id is not None:
            req["id"] = id
        self.send_raw(json.dumps(req).encode() + b"\n")
        return self.answer()

    def ok(self, name, arguments=None):
        r = self.cmd(name, arguments)
        if "return" not in r:
            raise ProtocolError(f"{name}: {r}")
        return r["return"]

    def wait_event(self, name, timeout=5):
        end = time.time() + timeout
        while True:
            for k, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(k)
            left = end - time.time()
            if left <= 0:
                raise TimeoutError(f"no {name} event")
            m = self.read(left)
            if m is None:
                raise ProtocolError(f"connection closed before the {name} event")
            if "event" not in m:
                raise ProtocolError(f"unexpected message while waiting for {name}: {m}")
            self.events.append(m)

    def drain(self, timeout=0.05):
        """Messages that arrive within timeout (validated); None marks the end of the connection."""
        out = []
        try:
            while True:
                m = self.read(timeout)
                out.append(m)
                if m is None:
                    break
        except TimeoutError:
            pass
        return out


def start_popek(argv, want_addresses):
    """Starts popek; returns (process, [addresses it printed]) once it listens."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    addrs = []
    end = time.time() + 20
    while len(addrs) < want_addresses:
        if time.time() > end:
            p.kill()
            raise SystemExit("popek did not print its QMP addresses")
        line = p.stderr.readline().decode(errors="replace")
        if not line:
            p.wait()
            raise SystemExit(f"popek ended (status {p.returncode}) before listening")
        if line.startswith("popek: QMP on "):
            addrs.append(line.strip()[len("popek: QMP on "):])
    return p, addrs
