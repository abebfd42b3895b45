"""mitos-agent's run_code kernel: one process per code context.

The agent starts it with:
  fd 0  requests, frames of a 4-byte big-endian length + JSON:
        {"id": N, "generation": G, "code": "...", "env": {"K": "V"}, "e2b_data": bool}
        G counts the post_forks the agent heard: when it changes under a running
        kernel, the kernel is a clone's copy and reseeds its random generators
        (random, numpy's global one) before the code runs, so clones of one
        snapshot do not draw the same numbers.
  fd 1  raw stdout of the user's code (and of anything it spawns)
  fd 2  raw stderr
  fd 3  events, same framing, JSON with "id" of the request:
        {"type": "result", "is_main_result": bool, "data": {mime: value}, "metadata": {...}}
        {"type": "error", "name": str, "value": str, "traceback": str}
        {"type": "done", "execution_count": int, "status": "ok" | "error"}
Binary MIME values (image/png, image/jpeg, application/pdf) are base64 text. With
"e2b_data", a pandas DataFrame also gives "e2b/data", its columns as lists (E2B's
Result.data), left out of an event it would make too big.
Everything the code prints is written before the event that follows it, so the
agent can drain fd 1/2 when an event arrives and keep output in order.
"""

import base64
import json
import math
import os
import struct
import sys

os.environ.setdefault("MPLBACKEND", "Agg")

# Keep the request pipe away from the user's code: input() reads /dev/null.
_requests = os.fdopen(os.dup(0), "rb", buffering=0)
_devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(_devnull, 0)
os.close(_devnull)
_events = os.fdopen(os.dup(3), "wb", buffering=0)
os.close(3)

# Whole lines per write, and an explicit flush before every event (_send).
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)

# An event must fit one agent frame (1 MiB) with room for the envelope.
MAX_EVENT = 1000 * 1000
_current_id = 0


def _send(obj):
    obj["id"] = _current_id
    data = json.dumps(obj, default=repr).encode()
    if len(data) > MAX_EVENT and "e2b/data" in obj.get("data", {}):
        # A big frame's columns: its rendering (bounded by pandas) still goes.
        del obj["data"]["e2b/data"]
        data = json.dumps(obj, default=repr).encode()
    if len(data) > MAX_EVENT:
        data = json.dumps({"id": _current_id, "type": obj.get("type", "result"),
                           "is_main_result": obj.get("is_main_result", False),
                           "data": {"text/plain": "<output of %d bytes omitted: over the %d byte limit>"
                                    % (len(data), MAX_EVENT)}}).encode()
    sys.stdout.flush()
    sys.stderr.flush()
    _events.write(struct.pack(">I", len(data)) + data)


def _read_exact(n):
    buf = b""
    while len(buf) < n:
        try:
            chunk = _requests.read(n - len(buf))
        except KeyboardInterrupt:
            continue  # an interrupt aimed at a cell that already finished
        if not chunk:
            return None
        buf += chunk
    return buf


def _jsonable(data):
    out = {}
    for mime, value in data.items():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        out[mime] = value
    return out


from IPython.core.displayhook import DisplayHook  # noqa: E402
from IPython.core.formatters import BaseFormatter  # noqa: E402
from IPython.core.displaypub import DisplayPublisher  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets import ObjectName, Unicode  # noqa: E402


class _Hook(DisplayHook):
    """The value of a cell's last expression: an execute_result."""

    def write_output_prompt(self):
        pass

    def write_format_data(self, format_dict, md_dict=None):
        _send({"type": "result", "is_main_result": True, "data": _jsonable(format_dict),
               "metadata": md_dict or {}})

    def finish_displayhook(self):
        sys.stdout.flush()


class _Publisher(DisplayPublisher):
    """display() and friends: display_data."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
        _send({"type": "result", "is_main_result": False, "data": _jsonable(data),
               "metadata": metadata or {}})

    def clear_output(self, wait=False):
        pass


class _Shell(InteractiveShell):
    displayhook_class = _Hook
    display_pub_class = _Publisher

    def _showtraceback(self, etype, evalue, stb):
        _send({"type": "error", "name": getattr(etype, "__name__", str(etype)),
               "value": str(evalue), "traceback": "\n".join(stb)})


shell = _Shell.instance(colors="NoColor")


def _png_of_figure(fig):
    from IPython.core.pylabtools import print_figure
    return print_figure(fig, "png", bbox_inches="tight")


# Registered by name: matplotlib is imported only when the user's code does.
shell.display_formatter.formatters["image/png"].for_type_by_name(
    "matplotlib.figure", "Figure", _png_of_figure)


class _ColumnsFormatter(BaseFormatter):
    """A pandas DataFrame as {column: [values]}, the "e2b/data" output E2B's Result.data
    reads; nothing for any other object (no print method to fall back on)."""
    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")
    _return_type = dict


def _plain(value):
    # JSON has no NaN or infinity; times go as ISO 8601 text.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.isoformat() if hasattr(value, "isoformat") else value


def _columns(frame):
    return {str(name): [_plain(v) for v in values] for name, values in frame.to_dict(orient="list").items()}


_data_formatter = _ColumnsFormatter(parent=shell.display_formatter, enabled=False)
_data_formatter.for_type_by_name("pandas.core.frame", "DataFrame", _columns)
shell.display_formatter.formatters["e2b/data"] = _data_formatter


def _flush_figures(*args, **kwargs):
    """Like Jupyter's inline backend: open figures are shown, then closed."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    from IPython.display import display
    for num in plt.get_fignums():
        display(plt.figure(num))
    plt.close("all")


def _patch_pyplot_show():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and plt.show is not _flush_figures:
        plt.show = _flush_figures


def _run(req):
    saved = {}
    for key, value in (req.get("env") or {}).items():
        saved[key] = os.environ.get(key)
        os.environ[key] = str(value)
    # Only E2B's surface asks for the columns (a frame's whole data).
    _data_formatter.enabled = bool(req.get("e2b_data"))
    try:
        _patch_pyplot_show()
        result = shell.run_cell(req.get("code", ""), store_history=True)
        _flush_figures()
        _patch_pyplot_show()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return "ok" if result.success else "error"


_generation = None


def _reseed_if_cloned(gen):
    """A clone shares its parent's random state: seeded again from the (reseeded)
    kernel pool. Python's hash seed stays the parent's: it cannot change in a process."""
    global _generation
    if _generation is not None and gen != _generation:
        import random
        random.seed()
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed()
    _generation = gen


def main():
    global _current_id
    while True:
        hdr = _read_exact(4)
        if hdr is None:
            return
        body = _read_exact(struct.unpack(">I", hdr)[0])
        if body is None:
            return
        req = json.loads(body)
        _current_id = req.get("id", 0)
        _reseed_if_cloned(req.get("generation"))
        try:
            status = _run(req)
        except KeyboardInterrupt:
            _send({"type": "error", "name": "KeyboardInterrupt", "value": "", "traceback": ""})
            status = "error"
        sys.stdout.flush()
        sys.stderr.flush()
        _send({"type": "done", "execution_count": shell.execution_count - 1, "status": status})


if __name__ == "__main__":
    main()
