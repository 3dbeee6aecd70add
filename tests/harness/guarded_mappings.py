"""Run a tool with every file mapping its resharding reader opens made unreadable.

    python -m tests.harness.guarded_mappings tools/change_mp.py ARGS...

The reader (reshard/lazy_files.LazyFiles) maps each source file with torch.load(mmap=True)
only to learn its tensors' places, then reads their bytes with explicit file reads. A touch
of a mapped page instead (a clone of a view, a copy through the mapping) makes the page
resident in the process -- with a warm page cache its whole large folio, megabytes per touch --
so the peak RSS grows with the checkpoint. Here each mapping that the reader would read by
file offset is mprotect'ed PROT_NONE as soon as it is opened: such a touch kills the process
with SIGSEGV instead of passing unseen.
"""
import ctypes
import runpy
import sys

from megatron_core.checkpoint.reshard import lazy_files

_PAGE = 4096
_PROT_NONE = 0


def _guard_every_mapping() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    get = lazy_files.LazyFiles.get

    def guarded_get(self, path, allow=()):
        opening = path not in self._open
        state = get(self, path, allow)
        opened = self._open[path]
        if opening and opened.base is not None:
            start = opened.base // _PAGE * _PAGE
            if libc.mprotect(start, opened.base + opened.size - start, _PROT_NONE) != 0:
                raise OSError(ctypes.get_errno(), f"mprotect of the mapping of {path} failed")
        return state
    lazy_files.LazyFiles.get = guarded_get


if __name__ == "__main__":
    _guard_every_mapping()
    tool, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(tool, run_name="__main__")
