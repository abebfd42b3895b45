"""Wall time of one command, for tools/bench-peers: its output goes to a file, never a
pipe, because a detached container (runsc run -detach, crun run -d) inherits the
descriptors and a pipe would not reach end-of-file until the container ends.

Run as a program it serves requests, one JSON argv per line on stdin, one JSON
[milliseconds, exit status, output tail] per line on stdout: bench-peers starts it in a
private mount namespace where crun can run (see crun_server() there)."""
import json
import subprocess
import sys
import tempfile
import time


def timed(argv, timeout=60):
    """(milliseconds, exit status, last 800 characters of its output)."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        took = (time.perf_counter() - t0) * 1000
        out.seek(0)
        text = out.read().decode(errors="replace").strip()[-800:]
    if rc == -1:
        text = f"took over {timeout} s. {text}"
    return took, rc, text


if __name__ == "__main__":
    for line in sys.stdin:
        print(json.dumps(timed(json.loads(line))), flush=True)
