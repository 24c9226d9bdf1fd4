"""The relay module the contract tests run as the edge agent and as modules: requests sent to its socket are
attested as the relay's caller, the module itself."""

import json
import sys
import textwrap
from collections.abc import Mapping

__all__ = ["RELAY_SCRIPT", "relay_agent_toml"]

# A module that relays RELAY_<n>_AT -> the socket its variable RELAY_<n>_TO names (n = 1, 2; stdlib only), so a test
# calls the daemon as that module; it writes its environment to RELAY_ENV_OUT when that is set.
RELAY_SCRIPT = textwrap.dedent("""
    import json, os, socket, threading, urllib.parse
    def pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass
    def serve(client, target):
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(target)
        except OSError:
            client.close(); return
        back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        back.start(); pipe(client, upstream); back.join(); client.close(); upstream.close()
    def listen(at, target):
        server = socket.socket(socket.AF_UNIX)
        partial = at + ".part"
        if os.path.exists(partial):
            os.unlink(partial)
        server.bind(partial); os.chmod(partial, 0o600); server.listen(64)
        os.rename(partial, at)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn, target), daemon=True).start()
    out = os.environ.get("RELAY_ENV_OUT")
    if out:
        with open(out + ".part", "w") as f:
            json.dump(dict(os.environ), f)
        os.rename(out + ".part", out)
    threads = []
    for n in (1, 2):
        if "RELAY_%d_AT" % n in os.environ:
            target = urllib.parse.urlparse(os.environ[os.environ["RELAY_%d_TO" % n]]).path
            threads.append(threading.Thread(target=listen, args=(os.environ["RELAY_%d_AT" % n], target)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""")


def relay_agent_toml(env: Mapping[str, str], pull_policy: str | None = "on-create") -> str:
    """The config's [agent] table for a relay edge agent (a host process of this Python) with ``env``: appended
    after the rest of a config, as its last table."""
    policy = f'imagePullPolicy = "{pull_policy}"\n' if pull_policy is not None else ""
    return (f'\n[agent]\nname = "edgeAgent"\ntype = "docker"\n{policy}\n[agent.config]\n'
            f"image = {json.dumps(sys.executable)}\n"
            f'createOptions = {{ Cmd = ["-c", {json.dumps(RELAY_SCRIPT)}] }}\n\n[agent.env]\n'
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in env.items()))
