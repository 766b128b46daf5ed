"""The host CNI executable, three ways, measured side by side in one run:

    .venv/bin/python -m bench.bench_plugin_binary [-n 50]

- ``launcher``: the plain script, ``python -IS`` + cni.plugin (cni/launcher.py), with this
  venv's interpreter: the reference; it needs a Python on the host.
- ``pyinstaller``: the onedir bundle of deploy/build_plugin.py (what the installer ships).
- ``relocated``: this interpreter's binary + libpython + only the stdlib files the plugin
  loads, copied into one directory and started through the dynamic loader
  (``ld.so --library-path``), since the binary's RUNPATH is absolute.

For each: size on disk, and per-exec wall latency (median, p99) of VERSION, ADD and DEL
against a real agent (datapath none: IPAM only, its socket in a temp dir, status port on
127.0.0.1) over the emulated EC2 (loopback only). Runs are interleaved so load drifts hit
every variant alike; the closing lines are ratios to the launcher.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "deploy"))
from build_plugin import build_plugin, bundle_size, oldest_glibc  # noqa: E402

from cloud.emulator.server import EmulatedCloud  # noqa: E402
from cloud.emulator.settings import EmulatorSettings  # noqa: E402
from cloud.emulator.world import build_world  # noqa: E402
from cni.launcher import write_plugin_launcher  # noqa: E402
from ipam_daemon.client import AgentClient  # noqa: E402

LOADER = "/lib64/ld-linux-x86-64.so.2"


def stdlib_files_loaded() -> list[Path]:
    """The stdlib files a VERSION and an ADD (agent absent) load, found by running them."""
    probe = ("import sys, os, json\nsys.path.insert(0, %r)\n"
             "os.environ.update(CNI_COMMAND=sys.argv[1], CNI_CONTAINERID='x', CNI_IFNAME='eth0',"
             " CNI_NETNS='/proc/self/ns/net')\n"
             "from cni import plugin\ntry:\n    plugin.main()\nexcept SystemExit:\n    pass\n"
             "import cni.spec_wire\n"
             "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]),"
             " file=sys.stderr)\n") % str(REPO)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files: set[Path] = set()
    for command in ("VERSION", "ADD"):
        conf = json.dumps({"cniVersion": "1.0.0", "name": "b", "type": "underlay",
                           "socket": "/nonexistent.sock"})
        proc = subprocess.run([sys.executable, "-IS", "-c", probe, command], input=conf.encode(),
                              capture_output=True, timeout=30, check=True)
        for name in json.loads(proc.stderr.decode().strip().splitlines()[-1]):
            if name and Path(name).is_relative_to(stdlib):
                files.add(Path(name))
    return sorted(files)


def build_relocated(dest: Path) -> tuple[list[str], int]:
    """Copy interpreter, libpython and the stdlib subset; return (argv prefix, bytes)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (dest / "bin").mkdir(parents=True)
    (dest / "lib").mkdir()
    shutil.copy2(os.path.realpath(sys.executable), dest / "bin" / "python3.11")
    libdir = Path(sysconfig.get_config_var("LIBDIR"))
    shutil.copy2(libdir / sysconfig.get_config_var("INSTSONAME"), dest / "lib")
    for elf in (dest / "bin" / "python3.11", dest / "lib" / sysconfig.get_config_var("INSTSONAME")):
        subprocess.run(["strip", "--strip-unneeded", str(elf)], check=True, timeout=60)
    target = dest / "lib" / "python3.11"
    for src in stdlib_files_loaded() + [stdlib / "os.py"]:  # os.py: the prefix landmark
        out = target / src.relative_to(stdlib)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    (target / "lib-dynload").mkdir(exist_ok=True)  # the exec-prefix landmark
    shutil.copytree(REPO / "cni", dest / "cni", ignore=shutil.ignore_patterns("datapath",
                                                                                "__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest)], check=True,
                   timeout=120, capture_output=True)  # same version: the pycs fit
    script = dest / "underlay.py"
    script.write_text("import sys\nsys.path.insert(0, %r)\nfrom cni.plugin import main\n"
                      "sys.exit(main())\n" % str(dest))
    size = sum(p.lstat().st_blocks * 512 for p in dest.rglob("*") if p.is_file())
    argv = [LOADER, "--library-path", str(dest / "lib"), str(dest / "bin/python3.11"), "-IS",
            str(script)]
    check = subprocess.run(argv[:-1] + ["-c", "import sys, json; print(sys.prefix, json.__file__)"],
                           env={}, capture_output=True, text=True, timeout=30, check=True)
    if not all(part.startswith(str(dest)) for part in check.stdout.split()):
        raise RuntimeError(f"relocated interpreter reads outside its directory: {check.stdout}")
    return argv, size


def python_install_size() -> int:
    """What the launcher needs on the host: interpreter, libpython, stdlib (no site-packages,
    no tests)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    libpython = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
    files = [Path(os.path.realpath(sys.executable)), libpython]
    files += [p for p in stdlib.rglob("*") if p.is_file()
              and not p.relative_to(stdlib).parts[0] in ("site-packages", "test", "idlelib")]
    return sum(p.lstat().st_blocks * 512 for p in files)


def start_agent(tmp: Path) -> tuple[EmulatedCloud, subprocess.Popen, str]:
    cloud = EmulatedCloud.start(port=0, settings=EmulatorSettings(buckets_enabled=False))
    world = build_world(cloud.endpoint, region=cloud.region, cluster=f"bench-{os.getpid()}")
    sock = str(tmp / "agent.sock")
    config = dict(datapath="none", warm_ips=4, cooldown_seconds=0.0, pool_interval=0.2,
                  cluster=world.cluster, instance_id=world.instances[0].instance_id,
                  region=cloud.region, cloud_endpoint=cloud.endpoint, socket_path=sock,
                  state_path=str(tmp / "ipam.db"), status_port=0, log_level="WARNING")
    (tmp / "agent.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "UNDERLAY_"))}
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_EC2_METADATA_DISABLED="true")
    agent = subprocess.Popen([sys.executable, "-m", "ipam_daemon.main", "--config",
                              str(tmp / "agent.json")], env=env, stdout=subprocess.DEVNULL,
                             stderr=open(tmp / "agent.log", "wb"))
    client = AgentClient(sock, timeout=5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, body = client.get("/v1/pool")
            if status == 200 and body.get("ready") and body.get("available", 0) >= 2:
                return cloud, agent, sock
        except OSError:
            client.close()
        time.sleep(0.1)
    agent.kill()
    cloud.stop()
    raise RuntimeError(f"agent did not get ready: {(tmp / 'agent.log').read_text()[-2000:]}")


def run(argv: list[str], env: dict, stdin: bytes) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, input=stdin, capture_output=True, timeout=30,
                          check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[-1]} {env.get('CNI_COMMAND')} failed: {proc.stdout[:300]!r}")
    return elapsed


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    bundle = build_plugin()
    with tempfile.TemporaryDirectory(prefix="h9bench-") as tmpdir:
        tmp = Path(tmpdir)
        launcher = write_plugin_launcher(str(tmp / "launcher"))
        relocated, relocated_size = build_relocated(tmp / "relocated")
        variants = {"launcher": [launcher], "pyinstaller": [str(bundle / "underlay")],
                    "relocated": relocated}
        launcher_size = python_install_size() + Path(launcher).lstat().st_blocks * 512
        sizes = {"launcher": launcher_size, "pyinstaller": bundle_size(bundle),
                 "relocated": relocated_size}
        cloud, agent, sock = start_agent(tmp)
        try:
            conf = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "underlay",
                               "socket": sock}).encode()
            base = {"CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0"}
            samples = {(v, c): [] for v in variants for c in ("VERSION", "ADD", "DEL")}
            for i in range(args.n + 3):  # the first 3 rounds warm the page cache
                for name, argv in variants.items():
                    cid = f"b{i}{name[0]}"
                    times = {
                        "VERSION": run(argv, {"CNI_COMMAND": "VERSION"}, conf),
                        "ADD": run(argv, {**base, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid},
                                   conf),
                        "DEL": run(argv, {**base, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid},
                                   conf),
                    }
                    if i >= 3:
                        for command, ms in times.items():
                            samples[(name, command)].append(ms)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=10)
            cloud.stop()
    print(f"host CNI executable, n={args.n} per command and variant, wall ms per exec "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); "
          f"pyinstaller bundle needs glibc >= {oldest_glibc(bundle)}")
    print(f"  {'variant':12s} {'size MB':>8s} " + " ".join(
        f"{c + ' med':>10s} {c + ' p99':>10s}" for c in ("VERSION", "ADD", "DEL")))
    for name in variants:
        cells = " ".join(f"{statistics.median(samples[(name, c)]):10.1f} "
                         f"{p99(samples[(name, c)]):10.1f}" for c in ("VERSION", "ADD", "DEL"))
        print(f"  {name:12s} {sizes[name] / 1e6:8.1f} {cells}")
    for name in ("pyinstaller", "relocated"):
        ratios = ", ".join(
            f"{c} {statistics.median(samples[(name, c)]) / statistics.median(samples[('launcher', c)]):.2f}x"
            for c in ("VERSION", "ADD", "DEL"))
        print(f"  {name} / launcher (median): {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
