"""A minimal CUDA runtime binding through ctypes: device query, memory, streams, events, graphs.

The TensorRT-side scripts may run in a Python that has tensorrt and numpy only (Jetson, NGC
containers, our GPU machine's /tmp/trtpy), so they cannot use torch or pycuda for device memory.
Only stable C entry points are used (no struct layouts beyond cudaDeviceProp's leading name).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Dict, List, Optional

import numpy as np

_LIB: Optional[ctypes.CDLL] = None
MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
ATTR_COMPUTE_MAJOR = 75   # cudaDevAttrComputeCapabilityMajor
ATTR_COMPUTE_MINOR = 76   # cudaDevAttrComputeCapabilityMinor
CAPTURE_MODE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal


class CudaError(RuntimeError):
    pass


def _candidates() -> List[str]:
    names = ["libcudart.so"] + [f"libcudart.so.{v}" for v in ("13", "12", "11.0")]
    found = ctypes.util.find_library("cudart")
    if found:
        names.insert(0, found)
    # pip-installed CUDA runtimes (nvidia-cuda-runtime-cu12/13) live inside site-packages
    for base in os.environ.get("PYTHONPATH", "").split(os.pathsep) + list(_site_dirs()):
        names += sorted(glob.glob(os.path.join(base, "nvidia", "**", "libcudart.so*"),
                                  recursive=True))
    return names


def _site_dirs() -> List[str]:
    import site

    try:
        return site.getsitepackages()
    except AttributeError:
        return []


def lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        errors = []
        for name in _candidates():
            try:
                _LIB = ctypes.CDLL(name)
                break
            except OSError as exc:
                errors.append(str(exc))
        if _LIB is None:
            raise CudaError("cannot load the CUDA runtime (libcudart): " + "; ".join(errors[:3]))
        _LIB.cudaGetErrorString.restype = ctypes.c_char_p
        _LIB.cudaGraphLaunch.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return _LIB


def check(status: int, what: str) -> None:
    if status != 0:
        message = lib().cudaGetErrorString(status).decode()
        raise CudaError(f"{what} failed: CUDA error {status} ({message})")


def device_count() -> int:
    count = ctypes.c_int(0)
    check(lib().cudaGetDeviceCount(ctypes.byref(count)), "cudaGetDeviceCount")
    return count.value


def device_name(device: int = 0) -> str:
    # cudaDeviceProp starts with `char name[256]` in every CUDA version; the rest of its layout
    # changes, so a generous buffer is passed and only the name is read.
    buffer = ctypes.create_string_buffer(16384)
    check(lib().cudaGetDeviceProperties(buffer, device), "cudaGetDeviceProperties")
    return buffer.raw[:256].split(b"\0", 1)[0].decode()


def compute_capability(device: int = 0) -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib().cudaDeviceGetAttribute(ctypes.byref(major), ATTR_COMPUTE_MAJOR, device), "attr")
    check(lib().cudaDeviceGetAttribute(ctypes.byref(minor), ATTR_COMPUTE_MINOR, device), "attr")
    return f"{major.value}.{minor.value}"


def list_devices() -> List[Dict[str, str]]:
    return [{"index": i, "name": device_name(i), "compute_capability": compute_capability(i)}
            for i in range(device_count())]


class DeviceBuffer:
    """cudaMalloc'd memory, grown on demand, freed on close."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = ctypes.c_void_p(0)
        self.nbytes = 0
        if nbytes:
            self.resize(nbytes)

    def resize(self, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        self.free()
        check(lib().cudaMalloc(ctypes.byref(self.ptr), ctypes.c_size_t(max(nbytes, 1))),
              f"cudaMalloc({nbytes})")
        self.nbytes = nbytes

    def copy_from(self, array: np.ndarray, stream: "Stream") -> None:
        array = np.ascontiguousarray(array)
        self.resize(array.nbytes)
        check(lib().cudaMemcpyAsync(self.ptr, array.ctypes.data_as(ctypes.c_void_p),
                                    ctypes.c_size_t(array.nbytes), MEMCPY_HOST_TO_DEVICE,
                                    stream.handle), "cudaMemcpyAsync H2D")

    def copy_to(self, array: np.ndarray, stream: "Stream") -> None:
        check(lib().cudaMemcpyAsync(array.ctypes.data_as(ctypes.c_void_p), self.ptr,
                                    ctypes.c_size_t(array.nbytes), MEMCPY_DEVICE_TO_HOST,
                                    stream.handle), "cudaMemcpyAsync D2H")

    def free(self) -> None:
        if self.ptr.value:
            check(lib().cudaFree(self.ptr), "cudaFree")
            self.ptr = ctypes.c_void_p(0)
            self.nbytes = 0


class Stream:
    def __init__(self) -> None:
        self.handle = ctypes.c_void_p(0)
        check(lib().cudaStreamCreate(ctypes.byref(self.handle)), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return self.handle.value or 0

    def synchronize(self) -> None:
        check(lib().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle.value:
            check(lib().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = ctypes.c_void_p(0)


class Event:
    def __init__(self) -> None:
        self.handle = ctypes.c_void_p(0)
        check(lib().cudaEventCreate(ctypes.byref(self.handle)), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(lib().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(lib().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def elapsed_ms(self, start: "Event") -> float:
        ms = ctypes.c_float()
        check(lib().cudaEventElapsedTime(ctypes.byref(ms), start.handle, self.handle),
              "cudaEventElapsedTime")
        return float(ms.value)

    def destroy(self) -> None:
        if self.handle.value:
            check(lib().cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = ctypes.c_void_p(0)


class Graph:
    """A captured CUDA graph of the work enqueued on `stream` between begin() and end()."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.graph = ctypes.c_void_p(0)
        self.exec = ctypes.c_void_p(0)

    def begin(self) -> None:
        check(lib().cudaStreamBeginCapture(self.stream.handle, CAPTURE_MODE_THREAD_LOCAL),
              "cudaStreamBeginCapture")

    def end(self) -> None:
        check(lib().cudaStreamEndCapture(self.stream.handle, ctypes.byref(self.graph)),
              "cudaStreamEndCapture")
        # cudaGraphInstantiateWithFlags has the same signature from CUDA 11.4 to 13
        check(lib().cudaGraphInstantiateWithFlags(ctypes.byref(self.exec), self.graph,
                                                  ctypes.c_ulonglong(0)),
              "cudaGraphInstantiateWithFlags")

    def abort(self) -> None:
        """Leave capture mode after a failed capture (the stream refuses work until then) and
        clear the error it left, so the engine can still run eagerly."""
        graph = ctypes.c_void_p(0)
        lib().cudaStreamEndCapture(self.stream.handle, ctypes.byref(graph))
        if graph.value:
            lib().cudaGraphDestroy(graph)
        lib().cudaGetLastError()
        self.destroy()

    def launch(self) -> None:
        check(lib().cudaGraphLaunch(self.exec, self.stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self.exec.value:
            check(lib().cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
        if self.graph.value:
            check(lib().cudaGraphDestroy(self.graph), "cudaGraphDestroy")
        self.exec = self.graph = ctypes.c_void_p(0)
