//! The HTML report: the table and charts drawn by Chart.js, which is read from Debian's
//! libjs-chart.js at report time and inlined, so the page needs no network to be viewed.
//! Once the charts are drawn the page marks each canvas `data-drawn` (it checks the canvas
//! for painted pixels) and sets `data-charts-rendered` on <body>, for tests and tools.

use std::path::PathBuf;

use super::report::{metrics, rows, visibility, Metric};
use super::Report;
use crate::error::{Error, Result};

/// Where Debian's libjs-chart.js installs the UMD build (global `Chart`).
pub const CHART_JS: &str = "/usr/share/javascript/chart.js/chart.min.js";

pub fn chart_js_path() -> PathBuf {
    std::env::var_os("SANDBOX_CHART_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHART_JS))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JSON safe to place inside a <script> element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string().replace("</", "<\\/")
}

fn metric_json(m: &[Metric]) -> serde_json::Value {
    serde_json::to_value(m).unwrap_or_default()
}

pub fn render(r: &Report) -> Result<String> {
    let path = chart_js_path();
    let chart_js = std::fs::read_to_string(&path).map_err(|e| {
        Error::Other(format!(
            "the HTML report inlines Chart.js from {} ({e}); install Debian's libjs-chart.js \
             (scripts/setup.sh does) or set SANDBOX_CHART_JS",
            path.display()
        ))
    })?;
    let mut table = String::new();
    let mut section = "";
    for row in rows(r) {
        if row.section != section {
            section = row.section;
            table.push_str(&format!(
                "<tr class=\"section\"><th>{}</th><th>native</th><th>vm</th></tr>\n",
                esc(section)
            ));
        }
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&row.what),
            esc(&row.native),
            esc(&row.vm)
        ));
    }
    let mut notes = String::new();
    for c in [&r.native, &r.vm] {
        if let Some(n) = &c.note {
            notes.push_str(&format!(
                "<p class=\"note\"><b>{} column:</b> {}</p>\n",
                esc(&c.isolation),
                esc(n)
            ));
        }
        for e in &c.errors {
            notes.push_str(&format!(
                "<p class=\"note\"><b>{} column error:</b> {}</p>\n",
                esc(&c.isolation),
                esc(e)
            ));
        }
    }
    let mut surface_labels = vec!["native".to_string()];
    let mut surface_values = vec![r.native_surface.syscalls_allowed];
    for t in &r.vm_surface.threads {
        surface_labels.push(format!("VMM {}", t.thread));
        surface_values.push(t.syscalls);
    }
    surface_labels.push("VMM, any thread".into());
    surface_values.push(r.vm_surface.syscalls_union);
    let data = serde_json::json!({
        "surface": {"labels": surface_labels, "values": surface_values,
                    "profile": r.native_surface.profile},
        "visibility": metric_json(&visibility(r)),
        "costs": metric_json(&metrics(r)),
        "vmRan": r.vm.ran,
        "vmRepresentative": r.vm.costs_representative,
    });
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>sandbox compare: native vs microVM isolation</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 4px 6px; text-align: left; vertical-align: top; }}
tr.section th {{ background: #e8eef6; }}
td:first-child {{ width: 30%; }}
.note {{ background: #fff4d6; padding: 6px 10px; border-left: 4px solid #e0a800; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 18px; }}
.chart {{ position: relative; height: 260px; }}
</style></head>
<body>
<h1>Native namespaces vs microVM: what a container sees, reaches and costs</h1>
<p><code>{command}</code> &mdash; image <b>{image}</b>, host kernel <b>{release}</b>, KVM: {kvm}</p>
{notes}
<h2>Charts</h2>
<div class="charts">
<div class="chart"><canvas id="chart-surface"></canvas></div>
<div class="chart"><canvas id="chart-visibility"></canvas></div>
<div class="chart"><canvas id="chart-cost-0"></canvas></div>
<div class="chart"><canvas id="chart-cost-1"></canvas></div>
<div class="chart"><canvas id="chart-cost-2"></canvas></div>
<div class="chart"><canvas id="chart-cost-3"></canvas></div>
<div class="chart"><canvas id="chart-cost-4"></canvas></div>
</div>
<h2>Table</h2>
<table>
{table}</table>
<script>
{chart_js}
</script>
<script>
const DATA = {data};
Chart.defaults.animation = false;
Chart.defaults.responsive = true;
Chart.defaults.maintainAspectRatio = false;
const NATIVE = '#d9534f', VM = '#337ab7';
const charts = [];
charts.push(new Chart(document.getElementById('chart-surface'), {{
  type: 'bar',
  data: {{ labels: DATA.surface.labels,
          datasets: [{{ label: 'host system calls allowed', data: DATA.surface.values,
                       backgroundColor: [NATIVE].concat(DATA.surface.labels.slice(1).map(() => VM)) }}] }},
  options: {{ indexAxis: 'y', plugins: {{ title: {{ display: true, text: 'Host system calls reachable (native: seccomp profile ' + DATA.surface.profile + ')' }},
              legend: {{ display: false }} }} }}
}}));
const vis = DATA.visibility;
charts.push(new Chart(document.getElementById('chart-visibility'), {{
  type: 'bar',
  data: {{ labels: vis.map(m => m.name),
          datasets: [{{ label: 'native', data: vis.map(m => m.native), backgroundColor: NATIVE }},
                     {{ label: 'vm', data: vis.map(m => m.vm), backgroundColor: VM }}] }},
  options: {{ scales: {{ y: {{ type: 'logarithmic' }} }},
             plugins: {{ title: {{ display: true, text: 'What the workload sees (counts, log scale)' }} }} }}
}}));
DATA.costs.forEach((m, i) => {{
  const vmLabel = DATA.vmRan ? (DATA.vmRepresentative ? 'vm' : 'vm (unrepresentative)') : 'vm (not run)';
  charts.push(new Chart(document.getElementById('chart-cost-' + i), {{
    type: 'bar',
    data: {{ labels: ['native', vmLabel],
            datasets: [{{ label: m.unit, data: [m.native, m.vm], backgroundColor: [NATIVE, VM] }}] }},
    options: {{ plugins: {{ title: {{ display: true, text: m.name + ' [' + m.unit + ']' }},
                legend: {{ display: false }} }} }}
  }}));
}});
// A canvas counts as drawn once it holds painted pixels.
let drawn = 0;
for (const c of charts) {{
  const cv = c.canvas;
  const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
  let painted = 0;
  for (let i = 3; i < px.length; i += 4) {{ if (px[i] !== 0) painted++; }}
  cv.dataset.drawn = painted > 0 ? 'yes' : 'no';
  cv.dataset.paintedPixels = String(painted);
  if (painted > 0) drawn++;
}}
document.body.dataset.chartsRendered = String(drawn);
</script>
</body></html>
"#,
        command = esc(&r.command),
        image = esc(&r.image),
        release = esc(&r.host_kernel_release),
        kvm = esc(&r.kvm_detail),
        notes = notes,
        table = table,
        chart_js = chart_js.replace("</script", "<\\/script"),
        data = script_json(&data),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_script_ends() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
        let v = serde_json::json!({"s": "</script>"});
        assert!(!script_json(&v).contains("</script"));
    }
}
