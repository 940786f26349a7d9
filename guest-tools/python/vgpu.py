"""vgpu: run SPIR-V compute kernels on the host GPU from inside a VM (ctypes over libvgpu.so).

    import vgpu
    dev = vgpu.Device()                       # first virtio-gpu render node
    x = dev.buffer(4 * n); x.write(floats)    # bytes, bytearray, memoryview or array('f')
    mod = dev.load_module(open("k.spv", "rb").read(), "main")
    mod.launch((groups, 1, 1), {0: x, 1: out}, push=struct.pack("<I", n)).wait()
    out.read()                                # -> bytes

Errors raise vgpu.Error with .status (a VGPU_ERR_* code) and the library's message; a
module the host refuses raises RefusedError, a launch out of its loop budget LoopBudgetError.
The shared library is found through $VGPU_LIB, then next to this file, then the system paths.
"""

import ctypes
import ctypes.util
import os

__all__ = ["Device", "Buffer", "Module", "Launch", "Caps", "Error", "RefusedError",
           "LoopBudgetError", "load_library"]

OK = 0
ERR_REFUSED = 8
ERR_LOOP_BUDGET = 9


class Error(Exception):
    """A failed library call: .status is the VGPU_ERR_* code, str() the library's message."""

    def __init__(self, status, name, message):
        super().__init__(f"{message} ({name})")
        self.status = status
        self.name = name


class RefusedError(Error):
    """The host refused a module or launch (the message carries the host's reason)."""


class LoopBudgetError(Error):
    """An invocation ran out of its loop budget; the launch's results are incomplete."""


class Caps(ctypes.Structure):
    """struct vgpu_caps (include/vgpu.h)."""
    _fields_ = [
        ("runs_modules", ctypes.c_uint32),
        ("loop_budget", ctypes.c_uint32),
        ("max_bindings", ctypes.c_uint32),
        ("max_push_constant_bytes", ctypes.c_uint32),
        ("bind_offset_align", ctypes.c_uint32),
        ("max_workgroups", ctypes.c_uint32),
        ("max_workgroup_size", ctypes.c_uint32 * 3),
        ("max_workgroup_invocations", ctypes.c_uint32),
        ("max_shared_bytes", ctypes.c_uint32),
        ("max_module_bytes", ctypes.c_uint32),
        ("max_modules", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("max_buffer_bytes", ctypes.c_uint64),
        ("max_storage_buffer_range", ctypes.c_uint64),
        ("device_name", ctypes.c_char * 48),
    ]


class _Binding(ctypes.Structure):
    """struct vgpu_binding."""
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("buffer", ctypes.c_void_p),
        ("offset", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
    ]


_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_SIGNATURES = {
    "vgpu_last_error": (ctypes.c_char_p, []),
    "vgpu_status_name": (ctypes.c_char_p, [ctypes.c_int]),
    "vgpu_version": (ctypes.c_char_p, []),
    "vgpu_open": (ctypes.c_int, [ctypes.c_char_p, _PP]),
    "vgpu_close": (None, [_P]),
    "vgpu_get_caps": (ctypes.c_int, [_P, ctypes.POINTER(Caps)]),
    "vgpu_buffer_create": (ctypes.c_int, [_P, ctypes.c_size_t, _PP]),
    "vgpu_buffer_free": (None, [_P]),
    "vgpu_buffer_size": (ctypes.c_size_t, [_P]),
    "vgpu_buffer_write": (ctypes.c_int, [_P, ctypes.c_size_t, _P, ctypes.c_size_t]),
    "vgpu_buffer_read": (ctypes.c_int, [_P, ctypes.c_size_t, _P, ctypes.c_size_t]),
    "vgpu_module_load": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_char_p, _PP]),
    "vgpu_module_free": (None, [_P]),
    "vgpu_module_launch": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_uint32),
                                          ctypes.POINTER(_Binding), ctypes.c_size_t, _P,
                                          ctypes.c_size_t, _PP]),
    "vgpu_launch_wait": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_uint64)]),
}

_lib = None


def load_library(path=None):
    """Loads libvgpu.so (path, $VGPU_LIB, next to this file, or the system's) and declares
    every function's signature. Returns the ctypes library."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    candidates = [path, os.environ.get("VGPU_LIB"),
                  os.path.join(os.path.dirname(os.path.abspath(__file__)), "libvgpu.so"),
                  ctypes.util.find_library("vgpu")]
    last = None
    for c in candidates:
        if not c:
            continue
        try:
            lib = ctypes.CDLL(c)
            break
        except OSError as e:
            last = e
    else:
        raise OSError(f"libvgpu.so not found (set VGPU_LIB): {last}")
    for name, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = argtypes
    _lib = lib
    return lib


def _check(rc):
    if rc == OK:
        return
    lib = load_library()
    name = lib.vgpu_status_name(rc).decode()
    message = lib.vgpu_last_error().decode(errors="replace")
    cls = {ERR_REFUSED: RefusedError, ERR_LOOP_BUDGET: LoopBudgetError}.get(rc, Error)
    raise cls(rc, name, message)


def _as_bytes(data):
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    return memoryview(data).cast("B").tobytes()


class Device:
    """An open vGPU (one host context). path: a render node, or None for the first one."""

    def __init__(self, path=None):
        self._lib = load_library()
        h = ctypes.c_void_p()
        _check(self._lib.vgpu_open(path.encode() if path else None, ctypes.byref(h)))
        self._h = h

    def close(self):
        """Closes the handle (buffers and modules keep the context alive)."""
        if getattr(self, "_h", None):
            self._lib.vgpu_close(self._h)
            self._h = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def caps(self):
        """The vGPU's capabilities (a Caps structure)."""
        c = Caps()
        _check(self._lib.vgpu_get_caps(self._h, ctypes.byref(c)))
        return c

    def buffer(self, size):
        """A new buffer of size bytes."""
        return Buffer(self, size)

    def load_module(self, spirv, entry="main"):
        """Loads SPIR-V bytes; RefusedError carries the host's reason."""
        return Module(self, _as_bytes(spirv), entry)


class Buffer:
    """A buffer on the vGPU."""

    def __init__(self, dev, size):
        self._lib = dev._lib
        self._dev = dev
        h = ctypes.c_void_p()
        _check(self._lib.vgpu_buffer_create(dev._h, size, ctypes.byref(h)))
        self._h = h
        self.size = size

    def __del__(self):
        if getattr(self, "_h", None):
            self._lib.vgpu_buffer_free(self._h)
            self._h = None

    def write(self, data, offset=0):
        """Writes bytes-like data (bytes, bytearray, array, memoryview) at offset."""
        raw = _as_bytes(data)
        _check(self._lib.vgpu_buffer_write(self._h, offset, raw, len(raw)))

    def read(self, size=None, offset=0):
        """Reads size bytes (default: to the end) at offset; returns bytes."""
        n = self.size - offset if size is None else size
        out = ctypes.create_string_buffer(n)
        _check(self._lib.vgpu_buffer_read(self._h, offset, out, n))
        return out.raw


class Module:
    """A loaded module; unloaded when garbage collected."""

    def __init__(self, dev, spirv, entry):
        self._lib = dev._lib
        self._dev = dev
        h = ctypes.c_void_p()
        _check(self._lib.vgpu_module_load(dev._h, spirv, len(spirv), entry.encode(),
                                          ctypes.byref(h)))
        self._h = h

    def __del__(self):
        if getattr(self, "_h", None):
            self._lib.vgpu_module_free(self._h)
            self._h = None

    def launch(self, grid, bindings, push=b""):
        """Launches grid (x, y, z) workgroups. bindings: {slot: Buffer} or
        {slot: (Buffer, offset, size)}; push: bytes (a multiple of 4)."""
        g = (ctypes.c_uint32 * 3)(*(tuple(grid) + (1, 1))[:3])
        items = []
        for slot, b in sorted(bindings.items()):
            buf, off, size = (b, 0, 0) if isinstance(b, Buffer) else b
            items.append(_Binding(slot, 0, buf._h, off, size))
        arr = (_Binding * len(items))(*items)
        push = _as_bytes(push)
        h = ctypes.c_void_p()
        _check(self._lib.vgpu_module_launch(self._h, g, arr, len(items), push or None,
                                            len(push), ctypes.byref(h)))
        return Launch(self._lib, h, [b if isinstance(b, Buffer) else b[0]
                                     for b in bindings.values()])


class Launch:
    """A submitted launch; keeps its buffers alive until waited for."""

    def __init__(self, lib, h, buffers):
        self._lib = lib
        self._h = h
        self._buffers = buffers

    def wait(self):
        """Waits; returns the submit-to-completion time in seconds. LoopBudgetError when an
        invocation ran out of its loop budget."""
        if not self._h:
            raise ValueError("launch already waited for")
        ns = ctypes.c_uint64()
        h, self._h = self._h, None
        try:
            _check(self._lib.vgpu_launch_wait(h, ctypes.byref(ns)))
        finally:
            self._buffers = None
        return ns.value / 1e9

    def __del__(self):
        if getattr(self, "_h", None):
            try:
                self.wait()
            except Error:
                pass
