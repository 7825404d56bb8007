"""Source text for the child processes of the activation-memory tests: ``HWM`` defines
``reset_peak()`` and ``hwm()`` (the resident high-water mark from /proc/self/status). The peak is
reset to the current RSS first, so memory mapped earlier and since evicted (shared-library pages
under memory pressure) cannot hide the measured step's growth."""

HWM = r'''
import re as _re
def hwm():
    return int(_re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
def reset_peak():
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
'''
