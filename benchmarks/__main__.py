"""Run every benchmark with real components (SoftHSM2, swtpm) and print one table of ratios.

    python -m benchmarks [--seconds 3] [--concurrency 16] [--only keys|pkcs11-libs|footprint|...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tests.fixtures.softhsm import make_token
from tests.fixtures.swtpm import start_swtpm

from edgeward.supervise import sigterm_as_interrupt

from . import (
    certs_issue,
    est_enroll,
    footprint,
    keylime_fleet,
    keys_sign,
    pkcs11_libraries,
    runtime_modules,
    soak,
    workload_sign,
)


def _footprint_table(r: dict[str, Any]) -> Table:
    floor = r["floor_rss_mb"]
    t = Table(title=f"Footprint: daemon VmRSS (children not counted) against the floor ({floor:.1f} MB: aiohttp + "
                    f"cryptography serving one route), and start to READY=1; one run")
    for c in ("process", "RSS idle MB", "/ floor", "RSS goal", "start to READY s (median of 5)", "start goal",
              "start / floor's", "first start s", "children at idle"):
        t.add_column(c)
    floor_start = r["floor_start_to_ready_s"]
    t.add_row("floor", f"{floor:.1f}", "1.00", "", f"{floor_start:.2f}", "", "1.00", "", "")
    rows = (("serve keys", r["serve_keys"], "serve keys"), ("serve keys --config-dir", r["serve_keys_config_dir"],
                                                             "serve keys"), ("run", r["run"], "run"))
    for name, m, goal in rows:
        rss_goal = footprint.GOALS[f"{goal}{' idle' if goal == 'run' else ''} RSS"]
        start_goal = footprint.GOALS[f"{goal} start to READY s"]
        ratio = m["rss_idle_mb"] / floor
        t.add_row(name, f"{m['rss_idle_mb']:.1f}", f"{ratio:.2f}",
                  f"<= {rss_goal}x {'yes' if ratio <= rss_goal else 'NO'}", f"{m['start_to_ready_s']:.2f}",
                  f"<= {start_goal} {'yes' if m['start_to_ready_s'] <= start_goal else 'NO'}",
                  f"{m['start_to_ready_s'] / floor_start:.2f}", f"{m['first_start_s']:.2f}", str(m["children_at_idle"]))
    return t


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--only", choices=["keys", "pkcs11-libs", "certs", "est", "workload", "runtime", "footprint",
                                           "soak", "keylime-fleet"], default=None,
                        help="one benchmark (soak and keylime-fleet run only when named: they take minutes)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the soak runs")
    parser.add_argument("--agents", default=",".join(map(str, keylime_fleet.STEPS)),
                        help="keylime-fleet: the fleet sizes to step through")
    parser.add_argument("--window", type=float, default=30.0, help="keylime-fleet: seconds attestations are counted")
    parser.add_argument("--quote-interval", type=float, default=2.0, help="keylime-fleet: the verifier's")
    parser.add_argument("--verifier-workers", type=int, default=2, help="keylime-fleet: the verifier's num_workers")
    parser.add_argument("--docker-uri", default=None, help="also measure the runtime on this dockerd (unix://...)")
    parser.add_argument("--docker-image", default=None, help="a local image with sleep, for --docker-uri")
    parser.add_argument("--backends", default="software,pkcs11,tpm")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    console = Console(width=170)
    results: dict[str, object] = {}
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        hsm = make_token(base / "softhsm")
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        tpm = start_swtpm(base / "swtpm")
        try:
            if args.only in (None, "pkcs11-libs"):
                rows = pkcs11_libraries.run_isolated(hsm.lib, hsm.label, hsm.pin, args.seconds)
                results["pkcs11_libraries"] = rows
                t = Table(title="PKCS#11 libraries on SoftHSM2")
                for c in ("library", "ECDSA P-256 signs/s", "event-loop progress while signing RSA-4096"):
                    t.add_column(c)
                for r in rows:
                    t.add_row(r["library"], f"{r['ecdsa_p256_per_s']:.0f}", f"{r['loop_progress_during_rsa4096']:.2f}")
                console.print(t)
            if args.only in (None, "keys"):
                backends = {
                    "software": {"config": ""},
                    "pkcs11": {"lib": hsm.lib, "label": hsm.label, "pin": hsm.pin,
                               "config": f'[aziot_keys]\npkcs11_lib_path = "{hsm.lib}"\n'
                                         f'pkcs11_base_slot = "{hsm.uri()}"\n'},
                    "tpm": {"tcti": tpm.tcti,
                            "config": f'[edgeward.keys]\nbackend = "tpm"\ntpm_tcti = "{tpm.tcti}"\n'},
                }
                wanted = args.backends.split(",")
                rows = keys_sign.run({k: v for k, v in backends.items() if k in wanted}, args.seconds)
                results["keys_sign"] = rows
                t = Table(title="Keys API ECDSA P-256 sign (`edgeward serve keys`), one run")
                for c in ("backend", "clients", "raw op/s", "API req/s", "bare aiohttp req/s", "API/bare", "API/raw",
                          "goal", "met", "API/raw at most (1 client)", "lean client: API / bare req/s",
                          "lean: API/bare", "lean: API/raw", "p50 ms", "p99 ms", "errors"):
                    t.add_column(c)
                for r in rows:
                    ceiling = r["ceiling_vs_raw"]
                    t.add_row(r["backend"], str(r["clients"]), f"{r['raw_per_s']:.0f}", f"{r['api_per_s']:.0f}",
                              f"{r['bare_per_s']:.0f}", f"{r['api_vs_bare']:.2f}", f"{r['api_vs_raw']:.2f}",
                              r["goal"], "yes" if r["met"] else "NO", "" if ceiling is None else f"{ceiling:.2f}",
                              f"{r['lean_api_per_s']:.0f} / {r['lean_bare_per_s']:.0f}",
                              f"{r['lean_api_vs_bare']:.2f}", f"{r['lean_api_vs_raw']:.2f}",
                              f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                              str(r["errors"]))
                console.print(t)
            if args.only in (None, "certs"):
                row = certs_issue.run(args.seconds, args.concurrency)
                results["certs_issue"] = row
                t = Table(title="Certificates issued through the certs API (local CA, P-256, software keys)")
                for c in ("API certs/s", "in-process certs/s", "API/in-process (goal >= 0.5)",
                          "aiohttp client: certs/s, / in-process", "p50 ms", "p99 ms",
                          "CPU us/cert: daemon / its loop / in-process", "errors"):
                    t.add_column(c)
                t.add_row(f"{row['certs_per_s']:.0f}", f"{row['in_process_per_s']:.0f}",
                          f"{row['api_vs_in_process']:.2f} {'yes' if row['met'] else 'NO'}",
                          f"{row['aiohttp_client_per_s']:.0f}, {row['aiohttp_client_vs_in_process']:.2f}",
                          f"{row['p50_ms']:.1f}",
                          f"{row['p99_ms']:.1f}",
                          f"{row['daemon_cpu_us_per_cert']:.0f} / {row['loop_cpu_us_per_cert']:.0f} / "
                          f"{row['in_process_cpu_us_per_cert']:.0f}", str(row["errors"]))
                console.print(t)
            if args.only in (None, "est"):
                row = est_enroll.run(args.seconds, args.concurrency)
                results["est_enroll"] = row
                t = Table(title="EST enrollments against the project's EST server (TLS, basic auth, 8 in flight)")
                t.add_column("enrollments/s")
                t.add_column("enrollments")
                t.add_row(f"{row['enrollments_per_s']:.0f}", str(row["enrollments"]))
                console.print(t)
            if args.only in (None, "workload"):
                rows = workload_sign.run(args.seconds, [1, 16, 64])
                results["workload_sign"] = rows
                t = Table(title="Workload API sign (HMAC-SHA256 with the module key), called by a module; median of 3 bare/API "
                          "pairs run back to back by one generator")
                for c in ("clients", "API req/s", "bare aiohttp req/s", "API/bare (goal >= 0.75)", "rounds",
                          "lean client: API/bare", "API p50 ms", "API p99 ms (goal < 10 at 64)", "bare p99 ms",
                          "errors"):
                    t.add_column(c)
                for r in rows:
                    t.add_row(str(r["concurrency"]), f"{r['api_per_s']:.0f}", f"{r['bare_per_s']:.0f}",
                              f"{r['api_vs_bare']:.2f} {'yes' if r['api_vs_bare'] >= 0.75 else 'NO'}",
                              " ".join(f"{x:.2f}" for x in r["ratios"]), f"{r['lean_api_vs_bare']:.2f}",
                              f"{r['api_p50_ms']:.2f}", f"{r['api_p99_ms']:.2f}",
                              f"{r['bare_p99_ms']:.2f}", str(r["errors"]))
                console.print(t)
            floor_mb: float | None = None
            if args.only in (None, "footprint"):
                r = footprint.run()
                results["footprint"] = r
                floor_mb = r["floor_rss_mb"]
                console.print(_footprint_table(r))
            if args.only in (None, "runtime"):
                footprint.compile_package()  # its RSS is set against the floor, as footprint's are
                if floor_mb is None:
                    floor_mb = footprint.floor_rss_mb()
                rows = [runtime_modules.run()]
                if args.docker_uri:
                    rows.append(runtime_modules.run(engine="docker", docker_uri=args.docker_uri,
                                                    image=args.docker_image))
                results["runtime_modules"] = rows
                t = Table(title="Module runtime: POST /modules + start -> running, and daemon memory")
                goal = footprint.GOALS["run + 50 modules RSS"]
                for c in ("engine", "20 modules total s", "p50 ms", "max ms", "RSS idle MB", "RSS with 50 modules MB",
                          f"/ floor {floor_mb:.1f} MB (goal <= {goal}x)"):
                    t.add_column(c)
                for r in rows:
                    ratio = r["rss_loaded_mb"] / floor_mb
                    r["rss_loaded_vs_floor"] = ratio
                    t.add_row(r["engine"], f"{r['total_s']:.2f}", f"{r['p50_ms']:.1f}", f"{r['max_ms']:.1f}",
                              f"{r['rss_idle_mb']:.1f}", f"{r['rss_loaded_mb']:.1f}",
                              f"{ratio:.2f} {'yes' if ratio <= goal else 'NO'}")
                console.print(t)
            if args.only == "soak":
                r = soak.run(args.minutes)
                results["soak"] = r
                t = Table(title=f"Soak: {args.minutes:g} min of key rounds, module lifecycles and workload calls")
                for c in ("key rounds", "module lifecycles", "workload calls", "RSS start / warm / end / idle MB",
                          "slope MB/min (goal < 0.2)", "idle - warm MB (goal <= 5)"):
                    t.add_column(c)
                t.add_row(str(r["key_rounds"]), str(r["lifecycles"]), f">= {r['workload_calls_at_least']}",
                          f"{r['start_rss_mb']:.1f} / {r['warm_rss_mb']:.1f} / {r['end_rss_mb']:.1f} / "
                          f"{r['idle_rss_mb']:.1f}",
                          f"{r['slope_mb_per_min']:.2f} {'yes' if r['slope_met'] else 'NO'}",
                          f"{r['idle_rss_mb'] - r['warm_rss_mb']:.1f} {'yes' if r['idle_met'] else 'NO'}")
                console.print(t)
            if args.only == "keylime-fleet":
                r = keylime_fleet.run([int(n) for n in args.agents.split(",")], args.window, args.quote_interval,
                                      args.verifier_workers)
                results["keylime_fleet"] = r
                t = Table(title=f"Keylime fleet: one verifier ({r['verifier_workers']} workers, idle RSS "
                                f"{r['verifier_idle_rss_mb']:.0f} MB, PSS {r['verifier_idle_pss_mb']:.0f} MB), quote interval {r['quote_interval_s']:g} s, "
                                f"{args.window:g} s window, {r['cpus']} CPUs shared with other work")
                for c in ("agents", "attestations/s", "ideal", "/ ideal", "period median / max s", "late (>1.5x)",
                          "verifier RSS (PSS) MB", "verifier RSS (PSS) MB / agent", "Edgeward RSS MB median / max", "swtpm MB",
                          "CPU verifier / Edgewards / swtpms (of 2.0)", "CPU ms / attestation verifier / Edgeward",
                          "bring-up s", "load"):
                    t.add_column(c)
                for row in r["rows"]:
                    t.add_row(str(row["agents"]), f"{row['attestations_per_s']:.2f}", f"{row['ideal_per_s']:.1f}",
                              f"{row['attestations_per_s'] / row['ideal_per_s']:.2f}",
                              f"{row['period_median_s']:.2f} / {row['period_max_s']:.2f}", str(row["late_devices"]),
                              f"{row['verifier_rss_mb']:.0f} ({row['verifier_pss_mb']:.0f})",
                              f"{row['verifier_mb_per_agent']:.2f} ({row['verifier_pss_mb_per_agent']:.2f})",
                              f"{row['edgeward_rss_mb_median']:.1f} / {row['edgeward_rss_mb_max']:.1f}",
                              f"{row['swtpm_rss_mb_median']:.1f}",
                              f"{row['verifier_cpu']:.2f} / {row['edgewards_cpu']:.2f} / {row['swtpms_cpu']:.2f}",
                              f"{row['verifier_cpu_ms_per_attestation']:.0f} / "
                              f"{row['edgeward_cpu_ms_per_attestation']:.0f}",
                              f"{row['bring_up_s']:.0f}",
                              f"{row['load_1min']:.1f}")
                console.print(t)
                if r["stopped"]:
                    console.print(f"stopped {r['stopped']}")
        finally:
            tpm.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    # Ctrl-C, SIGTERM or a closed terminal: every `finally` runs, so the daemons (and their modules, the workload
    # benchmark's load generator among them), the bare servers, the EST server and swtpm are stopped by pid.
    try:
        with sigterm_as_interrupt():
            main()
    except KeyboardInterrupt:
        print("interrupted: everything the benchmarks started is stopped", file=sys.stderr)
        sys.exit(130)
