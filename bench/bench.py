#!/usr/bin/env python3
"""DiQiD's benchmark: every figure of the speed targets, repeated, with the seed's
boot method (../shared/bench/seed-method.sh) run beside it on the same machine.

Prints a table (median and range) and writes bench/results.md and bench/boot.svg.
Run it with `make bench`; it is not part of `make test`. Usage: bench.py [--runs N]
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = os.path.join(os.path.dirname(ROOT), "shared", "bench", "seed-method.sh")
ENV = dict(os.environ, PATH=os.path.join(ROOT, "applets") + ":" + os.environ["PATH"])
ENV.pop("DOCKER_HOST", None)
IMAGE = "diqid-bench/busybox"


def sh(cmd, env=None, check=True):
    p = subprocess.run(cmd, shell=True, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        sys.exit(f"bench: {cmd!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def boot(cmd_script, extra_env=None):
    """Runs diqid-start with a CMD script; returns (start, end, stdout lines)."""
    env = dict(ENV, **(extra_env or {}))
    env["DIQID_RUNDIR"] = tempfile.mkdtemp(prefix="diqid-bench.", dir="/tmp")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write("set -e\nnow() { date +%s.%N; }\n" + cmd_script)
    t0 = time.time()
    p = subprocess.run(["diqid-start", "sh", f.name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t1 = time.time()
    os.unlink(f.name)
    if p.returncode != 0:
        sys.exit(f"bench: diqid-start failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return t0, t1, p.stdout.splitlines()


def values(lines, key):
    """KEY=number lines; busybox time's `0m 1.23s` counts as seconds."""
    out = []
    for l in lines:
        if l.startswith(key + "="):
            v = l.split("=", 1)[1]
            m = re.fullmatch(r"\s*(\d+)m\s*([\d.]+)s\s*", v)
            out.append(int(m.group(1)) * 60 + float(m.group(2)) if m else float(v))
    return out


def dd_seconds(text):
    m = re.search(r"copied, ([\d.]+) ?s", text)
    return float(m.group(1)) if m else None


def stat(xs):
    return (statistics.median(xs), min(xs), max(xs)) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed-runs", type=int, default=2)
    args = ap.parse_args()
    bench_dir = tempfile.mkdtemp(prefix="diqid-bench-data.", dir="/tmp")
    fig = {k: [] for k in ["fresh", "kept", "run", "stop", "rss", "bind_w", "bind_r", "vol_w", "vol_r", "seed_ready", "seed_run"]}
    phases = {}

    # One long VM: docker run, memory, throughput, then a fresh-volume start figure.
    mb = 256
    script = f"""
printf 'ready=%s\\n' "$(now)"
sed 's/^/phase /' "$DIQID_RUNDIR/phases"
'{ROOT}/tools/busybox-image' {IMAGE}
docker run --rm {IMAGE} true
for i in 1 2 3 4 5 6 7 8 9 10; do s=$(now); docker run --rm {IMAGE} true; printf 'run=%s\\n' "$(echo "$(now) - $s" | bc)"; done
sleep 10
printf 'rss=%s\\n' "$(awk '/VmRSS/{{print $2/1024}}' /proc/$(cat "$DIQID_RUNDIR/qemu.pid")/status)"
for i in 1 2; do
  t() {{ key=$1; shift; printf '%s=%s\n' "$key" "$("$@" 2>&1 | sed -n 's/^real[[:space:]]*//p')"; }}
  t bind_w docker run --rm -v {bench_dir}:{bench_dir} {IMAGE} time dd if=/dev/zero of={bench_dir}/f bs=1M count={mb} conv=fsync
  t bind_r docker run --rm -v {bench_dir}:{bench_dir} {IMAGE} time dd if={bench_dir}/f of=/dev/null bs=1M
  t vol_w docker run --rm -v benchvol:/data {IMAGE} time dd if=/dev/zero of=/data/f bs=1M count={mb} conv=fsync
  t vol_r docker run --rm --privileged -v benchvol:/data {IMAGE} sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches; time dd if=/data/f of=/dev/null bs=1M'
done
printf 'end=%s\\n' "$(now)"
"""
    print("bench: one VM for docker run, memory and throughput ...", file=sys.stderr)
    t0, t1, out = boot(script)
    fig["fresh"].append(values(out, "ready")[0] - t0)
    fig["stop"].append(t1 - values(out, "end")[0])
    for k in ["run", "rss", "bind_w", "bind_r", "vol_w", "vol_r"]:
        fig[k] += values(out, k)
    for l in out:
        if l.startswith("phase "):
            name, rest = l[6:].split(" ", 1)
            phases.setdefault(name, []).append(float(rest.split("host=")[1]))

    # The outer filesystem, the same work.
    outer = {"w": [], "r": []}
    for _ in range(2):
        w = sh(f"dd if=/dev/zero of={bench_dir}/o bs=1M count={mb} conv=fsync 2>&1").stdout
        r = sh(f"dd if={bench_dir}/o of=/dev/null bs=1M 2>&1").stdout
        outer["w"].append(dd_seconds(w))
        outer["r"].append(dd_seconds(r))
    sh(f"rm -f {bench_dir}/o {bench_dir}/f")

    # Fresh volumes: start, then shut down after an empty CMD.
    print("bench: fresh-volume starts ...", file=sys.stderr)
    for _ in range(args.runs - 1):
        t0, t1, out = boot("printf 'ready=%s\\n' \"$(now)\"; sed 's/^/phase /' \"$DIQID_RUNDIR/phases\"; printf 'end=%s\\n' \"$(now)\"\n")
        fig["fresh"].append(values(out, "ready")[0] - t0)
        fig["stop"].append(t1 - values(out, "end")[0])
        for l in out:
            if l.startswith("phase "):
                name, rest = l[6:].split(" ", 1)
                phases.setdefault(name, []).append(float(rest.split("host=")[1]))

    # A kept volume that holds images.
    print("bench: kept-volume starts ...", file=sys.stderr)
    vol = {"DOCKER_VOLUME_FILE": f"{bench_dir}/kept.qcow2", "DOCKER_VOLUME_REMOVE": "false"}
    boot(f"'{ROOT}/tools/busybox-image' {IMAGE}\n", vol)
    for _ in range(args.runs):
        t0, t1, out = boot("printf 'ready=%s\\n' \"$(now)\"; docker image inspect " + IMAGE + " >/dev/null; printf 'end=%s\\n' \"$(now)\"\n", vol)
        fig["kept"].append(values(out, "ready")[0] - t0)
        fig["stop"].append(t1 - values(out, "end")[0])
    sh(f"rm -rf {bench_dir}")

    # The seed's method, side by side.
    if os.path.exists(SEED):
        print("bench: the seed's method ...", file=sys.stderr)
        for _ in range(args.seed_runs):
            out = sh(f"bash {SEED}", check=False).stdout
            m = re.search(r"ready_s=([\d.]+) run_s=([\d.]+)", out)
            if m:
                fig["seed_ready"].append(float(m.group(1)))
                fig["seed_run"].append(float(m.group(2)))

    report(fig, outer, phases, mb, args)


def report(fig, outer, phases, mb, args):
    med = lambda k: statistics.median(fig[k]) if fig[k] else None
    fmt = lambda s, unit="s": "n/a" if not s else f"{s[0]:.2f} {unit} ({s[1]:.2f} to {s[2]:.2f})"
    mbps = lambda secs: [mb / s for s in secs if s]
    seed_r, seed_run = med("seed_ready"), med("seed_run")
    ratio = lambda ours, ref: f"{ref / ours:.1f}x faster" if ours and ref else "n/a"
    rows = [
        ("start to dockerd answering, fresh volume", "<= 10 s", fmt(stat(fig["fresh"])), fmt(stat(fig["seed_ready"])), ratio(med("fresh"), seed_r)),
        ("the same, kept volume with images", "<= 8 s", fmt(stat(fig["kept"])), "", ratio(med("kept"), seed_r)),
        ("docker run --rm IMAGE true", "<= 1.5 s", fmt(stat(fig["run"])), fmt(stat(fig["seed_run"])), ratio(med("run"), seed_run)),
        ("shutdown after CMD ends", "<= 2 s", fmt(stat(fig["stop"])), "", ""),
        ("QEMU resident memory, idle, MEMORY=1G", "<= 400 MiB", fmt(stat(fig["rss"]), "MiB"), "", ""),
    ]
    for what, key, okey in [("bind mount write", "bind_w", "w"), ("bind mount read", "bind_r", "r"), ("volume write", "vol_w", "w"), ("volume read", "vol_r", "r")]:
        ours, theirs = stat(mbps(fig[key])), stat(mbps(outer[okey]))
        rel = f"{ours[0] / theirs[0]:.2f} of outer" if ours and theirs else "n/a"
        rows.append((f"{what}, {mb} MiB sequential", ">= 0.5 of outer", fmt(ours, "MB/s"), "outer: " + fmt(theirs, "MB/s"), rel))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG unless KVM works; median (range) of {args.runs} starts, "
        f"{len(fig['run'])} docker runs, {len(fig['seed_ready'])} runs of the seed's method.",
        "",
        "| figure | target | DiQiD | reference | ratio |",
        "|---|---|---|---|---|",
    ] + [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    order = ["qemu-tcg", "qemu-kvm", "modules", "root", "mounts", "network", "volume", "containerd-started", "modules-late", "dockerd-started", "containerd", "ready"]
    ph = [(n, statistics.median(phases[n])) for n in order if n in phases]
    lines += ["", "Boot phases (outer clock, seconds since diqid-start began, median):", "",
              "| " + " | ".join(n for n, _ in ph) + " |", "|" + "---|" * len(ph), "| " + " | ".join(f"{t:.2f}" for _, t in ph) + " |"]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "bench", "results.md"), "w") as f:
        f.write(text)
    svg(ph, med("fresh"), med("kept"), seed_r)


def svg(ph, fresh, kept, seed):
    """A bar chart: time to a ready dockerd, DiQiD's phases against the seed's method."""
    bars = [("DiQiD, fresh volume", fresh), ("DiQiD, kept volume", kept), ("seed's method", seed)]
    bars = [(n, v) for n, v in bars if v]
    top = max(v for _, v in bars) * 1.1
    W, H, left, row = 760, 60 + 40 * len(bars) + 60, 170, 40
    x = lambda s: left + (W - left - 30) * s / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="13">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           '<text x="10" y="22" font-size="15">Seconds from start to a ready dockerd (TCG, 2 cores)</text>']
    for i, (name, v) in enumerate(bars):
        y = 40 + i * row
        out.append(f'<text x="10" y="{y + 19}">{name}</text>')
        out.append(f'<rect x="{left}" y="{y + 5}" width="{x(v) - left:.1f}" height="22" fill="{"#3b7dd8" if "DiQiD" in name else "#999"}"/>')
        out.append(f'<text x="{x(v) + 5:.1f}" y="{y + 21}">{v:.1f} s</text>')
    y = 40 + len(bars) * row + 10
    for name, t in ph:
        out.append(f'<line x1="{x(t):.1f}" y1="40" x2="{x(t):.1f}" y2="{y}" stroke="#d33" stroke-dasharray="2,3"/>')
    for j, (name, t) in enumerate(ph):
        out.append(f'<text x="{x(t):.1f}" y="{y + 14 + 13 * (j % 3)}" font-size="10" fill="#d33">{name}</text>')
    out.append("</svg>")
    with open(os.path.join(ROOT, "bench", "boot.svg"), "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
