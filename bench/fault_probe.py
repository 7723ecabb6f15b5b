"""What re-faulting freed memory costs on this machine, right away and after a wait.

  python bench/fault_probe.py                        # 3 GiB, the default wait pattern
  python bench/fault_probe.py --gib=1 --waits=0,0,2,0

Why it is a benchmark: XLA:CPU maps its scratch buffer anew for every compiled step (3.4 GiB
for the ViT-Ti train step at the issue's batch) and the kernel zeroes it page by page. On a VM
with virtio-balloon *free page reporting*, memory that has stayed free for a while is handed
back to the host, and faulting it in again costs more system time than re-faulting memory freed
a moment ago. That made a sim_jax step timed right after a PyTorch step slower than one timed
after its own step, which is why `bench/train_step.py` takes an untimed re-warm step per round
(`REWARM` there).

Each touch maps `--gib` of fresh anonymous memory, writes one byte per 4 KiB page, unmaps it,
and records wall seconds, system CPU seconds and minor faults (`getrusage`); before touch i the
probe sleeps `waits[i]` seconds. The JSON also records whether the kernel reports free pages
(`/sys/module/page_reporting`, the balloon device's feature bit 5).
"""

from __future__ import annotations

import argparse
import glob
import json
import mmap
import os
import resource
import statistics
import time

PAGE = 4096
# VIRTIO_BALLOON_F_REPORTING (virtio spec 5.5.3): the device accepts free page reports.
_BALLOON_F_REPORTING = 5


def touch(nbytes: int) -> dict:
  """Map `nbytes` anonymous, write one byte per page, unmap; wall / system seconds, faults."""
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
  view = memoryview(m)
  for off in range(0, nbytes, PAGE * 1024):  # slices of 1024 pages: few Python iterations
    n = min(PAGE * 1024, nbytes - off)
    view[off:off + n:PAGE] = b"\1" * ((n + PAGE - 1) // PAGE)
  view.release()
  m.close()
  t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
  return {"wall_s": t, "sys_s": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt}


def page_reporting() -> dict:
  """The kernel's free-page-reporting state, as far as sysfs shows it (empty where absent)."""
  out = {}
  for path in sorted(glob.glob("/sys/module/page_reporting/parameters/*")):
    with open(path) as f:
      out[os.path.basename(path)] = f.read().strip()
  for path in glob.glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*/features"):
    with open(path) as f:
      bits = f.read().strip()
    out["balloon_reporting_feature"] = len(bits) > _BALLOON_F_REPORTING and bits[
        _BALLOON_F_REPORTING] == "1"
  return out


def run(gib: float, waits: list[float]) -> dict:
  nbytes = int(gib * 2**30) // PAGE * PAGE
  touches = []
  for w in waits:
    time.sleep(w)
    touches.append({"wait_s": w, **touch(nbytes)})
    print(f"wait {w:>4} s: touch {touches[-1]['wall_s']:.2f} s, system "
          f"{touches[-1]['sys_s']:.2f} s, {touches[-1]['minflt']} minor faults", flush=True)
  return {"date": time.strftime("%Y-%m-%d %H:%M"), "bytes": nbytes, "touches": touches,
          "page_reporting": page_reporting(), "load_avg_at_start": os.getloadavg()}


def summary(result: dict) -> dict:
  """Median system seconds of touches after no wait and after a wait (the first touch, which
  also faults the process's page tables in, is left out)."""
  rest = result["touches"][1:]
  now = [t["sys_s"] for t in rest if t["wait_s"] == 0]
  later = [t["sys_s"] for t in rest if t["wait_s"] > 0]
  return {"sys_s_no_wait_median": statistics.median(now) if now else None,
          "sys_s_after_wait_median": statistics.median(later) if later else None}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--gib", type=float, default=3.0)
  p.add_argument("--waits", default="0,0,0,5,0,0,5,0,3,0,2,0,1,0")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "fault_probe.json"))
  args = p.parse_args(argv)
  waits = [float(w) for w in args.waits.split(",") if w]
  if any(w < 0 for w in waits):
    raise ValueError(f"--waits must be >= 0 seconds; got {args.waits!r}")
  result = run(args.gib, waits)
  result["summary"] = summary(result)
  print(json.dumps(result["summary"]))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
