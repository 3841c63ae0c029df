"""Pairs of quick starts (float32 vs bfloat16, one seed each, `compare.py`'s JSON) summarised over
seeds: each figure per seed, and the bf16 - fp32 differences with their mean, their range and the
float32 runs' own seed-to-seed range, so that a difference is read against what the seed alone
moves.

  python results/bf16_quickstart_128px/seeds.py comparison_seed0.json comparison_seed1.json ... \
      > seeds.json
  python results/bf16_quickstart_128px/seeds.py --markdown seeds.json   # the README's table
"""

import json
import statistics
import sys


def figures(run: dict) -> dict:
  ext = run["external_by_source"]
  return {"test_accuracy": run["test_accuracy"][0], "test_covid_auc": run["test_covid_auc"][0],
          "ieee8023_covid_auc": run["ieee8023_covid_auc"],
          "external_accuracy": run["external_accuracy"][0],
          **{f"{s}_called_covid": ext[s]["called_covid"] for s in sorted(ext)},
          **{f"{s}_mean_p_covid": p for s, p in sorted(run["external_mean_p_covid_by_source"].items())}}


def main(paths):
  pairs = [json.load(open(p)) for p in paths]
  per = [{d: figures(pair[d]) for d in ("fp32", "bf16")} for pair in pairs]
  summary = {}
  for name in per[0]["fp32"]:
    fp32 = [p["fp32"][name] for p in per]
    diff = [p["bf16"][name] - p["fp32"][name] for p in per]
    summary[name] = {"fp32": fp32, "bf16": [p["bf16"][name] for p in per],
                     "bf16_minus_fp32": diff, "mean_difference": statistics.fmean(diff),
                     "differences_above_zero": sum(d > 0 for d in diff),
                     "fp32_seed_range": max(fp32) - min(fp32)}
  print(json.dumps({"pairs": paths, "figures": summary}, indent=1))


# (row, figure, scale, format of a value, unit of a difference)
ROWS = [("test accuracy", "test_accuracy", 1, "{:.3f}", ""),
        ("test COVID AUC", "test_covid_auc", 1, "{:.3f}", ""),
        ("COVID AUC inside ieee8023", "ieee8023_covid_auc", 1, "{:.3f}", ""),
        ("cxr-external accuracy", "external_accuracy", 1, "{:.3f}", ""),
        ("Kermany-test called COVID", "kermany-test_called_covid", 100, "{:.1f}", " points"),
        ("SIIM COVID called COVID", "siim-fisabio-rsna_called_covid", 100, "{:.1f}", " points"),
        ("Kermany-test mean p(covid)", "kermany-test_mean_p_covid", 1, "{:.3f}", ""),
        ("SIIM mean p(covid)", "siim-fisabio-rsna_mean_p_covid", 1, "{:.3f}", "")]


def markdown(summary_path: str) -> str:
  figures = json.load(open(summary_path))["figures"]
  n = len(figures["test_accuracy"]["fp32"])
  lines = [f"| seeds {' / '.join(map(str, range(n)))} | float32 | bfloat16 (native Winograd) | "
           "bf16 - fp32: mean (above zero) | float32's own seed range |", "| --- " * 5 + "|"]
  for label, key, scale, fmt, unit in ROWS:
    v = figures[key]
    values = {d: " / ".join(fmt.format(x * scale) for x in v[d]) + (" %" if unit else "")
              for d in ("fp32", "bf16")}
    lines.append(f"| {label} | {values['fp32']} | {values['bf16']} | "
                 f"{'+' if v['mean_difference'] >= 0 else ''}"
                 f"{fmt.format(v['mean_difference'] * scale)}{unit} "
                 f"({v['differences_above_zero']} of {n}) | "
                 f"{fmt.format(v['fp32_seed_range'] * scale)}{unit} |")
  return "\n".join(lines)


if __name__ == "__main__":
  if sys.argv[1] == "--markdown":
    print(markdown(sys.argv[2]))
  else:
    main(sys.argv[1:])
