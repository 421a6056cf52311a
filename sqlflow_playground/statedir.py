"""The state directory holds every tenant's secrets (the store keeps their data sources
and passwords; ``databases/`` their sqlite files; ``jobs/`` their output), so no other
local user may read anything in it: the directory is 0700, every file in it 0600.

New files are created that way by their writers; ``secure_state_dir`` makes an existing
directory, left by an older release or a careless hand, agree at start-up, and says so.
"""
import logging
import os
import stat

log = logging.getLogger(__name__)

DIR_MODE, FILE_MODE = 0o700, 0o600


def secure_state_dir(path: str) -> int:
    """Create ``path`` 0700 if missing; tighten what is in it. Returns how many entries
    had their mode changed (symbolic links are never followed nor changed)."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    changed = 0
    for root, dirs, files in os.walk(path):
        changed += _tighten(root, DIR_MODE)
        for name in files:
            changed += _tighten(os.path.join(root, name), FILE_MODE)
    if changed:
        log.warning("state directory %s: tightened the permissions of %d path(s) "
                    "(directories 0700, files 0600)", path, changed)
    return changed


def _tighten(path: str, mode: int) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:  # removed meanwhile (a job purged, a WAL checkpointed)
        return 0
    if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & ~mode == 0:
        return 0
    os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    return 1


def create_private_file(path: str) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then tighten it), so that a
    library that opens it next (sqlite) never makes it readable to others even briefly."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
