"""The planning viewer's HTML page: ``__TITLE__`` and ``__DATA__`` (the record as JSON) are filled in by
``write_viewer``. Plain JS on canvases; no server, no external resources."""

PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:16px;color:#222}
#panels{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-size:12px;color:#555;max-width:360px}
canvas{border:1px solid #ccc;background:#fff}
.frames canvas{image-rendering:pixelated}
input[type=range]{width:320px;vertical-align:middle}
#info,#iterinfo{font-family:monospace}
</style></head><body>
<h2>__TITLE__</h2>
<div>step <input type="range" id="step" min="0" value="0"> <button id="play">play</button> <span id="info"></span></div>
<div>CEM iteration <input type="range" id="iter" min="0" value="0"> <span id="iterinfo"></span></div>
<p style="font-size:12px;color:#555">Candidates of the selected iteration of the active replan, coloured by cost
(teal = low, red = high; elites thick), the plan (the final elite mean, dashed), the executed path (grey) and the goal
(gold star).</p>
<div id="panels">
<figure class="frames"><canvas id="frame" width="240" height="240"></canvas> <canvas id="goal" width="120" height="120"></canvas>
<figcaption>frame at this step, and the goal</figcaption></figure>
<figure><canvas id="plane" width="380" height="380"></canvas><figcaption id="planecap"></figcaption></figure>
<figure><canvas id="map" width="380" height="380"></canvas><figcaption>latent map: PCA of the episode's frame latents
and the goal's; dashed: the active plan's predicted latents</figcaption></figure>
</div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const R = JSON.parse(document.getElementById("data").textContent);
const $ = id => document.getElementById(id);
const images = R.steps.map(s => { const i = new Image(); i.src = s.frame; return i; });
const goalImage = R.goal_frame ? Object.assign(new Image(), {src: R.goal_frame}) : null;
const stepIn = $("step"), iterIn = $("iter");
stepIn.max = R.steps.length - 1;
$("planecap").textContent = (R.projection === "probe" ? "env coordinates (" + R.axes.join(", ") +
  "): candidates through the linear probe, executed path from the simulator" : "latent PCA (" + R.axes.join(", ") +
  "): no probe given") ;

function bounds(points) {
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const [x, y] of points) {
    if (!isFinite(x) || !isFinite(y)) continue;
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  const pad = 0.12 * Math.max(x1 - x0, y1 - y0, 1e-6);
  return [x0 - pad, x1 + pad, y0 - pad, y1 + pad];
}
const planePoints = [...R.steps.map(s => s.xy), R.goal_xy];
const mapPoints = [...R.steps.map(s => s.map), R.goal_map];
for (const r of R.replans) {
  planePoints.push(...r.plan); mapPoints.push(...r.plan_map);
  for (const it of r.iterations) it.paths.forEach((p, k) => { if (it.elite[k]) planePoints.push(...p); });
}
const planeBox = bounds(planePoints), mapBox = bounds(mapPoints);

function view(canvas, box, yDown) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, m = 28;
  const s = Math.min((w - 2 * m) / (box[1] - box[0]), (h - 2 * m) / (box[3] - box[2]));
  const tx = x => m + (x - box[0]) * s;
  const ty = y => yDown ? m + (y - box[2]) * s : h - m - (y - box[2]) * s;
  ctx.clearRect(0, 0, w, h);
  return {ctx, p: ([x, y]) => [tx(x), ty(y)]};
}
function line(v, pts, style, width, dash) {
  const c = v.ctx; c.beginPath(); c.strokeStyle = style; c.lineWidth = width; c.setLineDash(dash || []);
  pts.forEach((q, i) => { const [x, y] = v.p(q); i ? c.lineTo(x, y) : c.moveTo(x, y); }); c.stroke(); c.setLineDash([]);
}
function dot(v, q, r, fill) {
  const [x, y] = v.p(q), c = v.ctx; c.beginPath(); c.fillStyle = fill; c.arc(x, y, r, 0, 7); c.fill();
}
function star(v, q) {
  const [x, y] = v.p(q), c = v.ctx; c.beginPath();
  for (let i = 0; i < 10; i++) {
    const a = Math.PI / 5 * i - Math.PI / 2, r = i % 2 ? 4 : 10; c.lineTo(x + r * Math.cos(a), y + r * Math.sin(a));
  }
  c.closePath(); c.fillStyle = "#e6b800"; c.fill(); c.strokeStyle = "#7a6000"; c.lineWidth = 1; c.stroke();
}
function costColour(t, alpha) {  // t = 0 (lowest cost, teal) .. 1 (highest, red)
  const a = [0, 150, 136], b = [220, 50, 47];
  return "rgba(" + a.map((v, i) => Math.round(v + t * (b[i] - v))).join(",") + "," + alpha + ")";
}
function labels(v, names) {
  const c = v.ctx; c.fillStyle = "#555"; c.font = "11px sans-serif";
  c.fillText(names[0] + " \u2192", v.ctx.canvas.width / 2 - 20, v.ctx.canvas.height - 8);
  c.save(); c.translate(11, v.ctx.canvas.height / 2 + 20); c.rotate(-Math.PI / 2);
  c.fillText(names[1] + " \u2192", 0, 0); c.restore();
}

function draw() {
  const s = +stepIn.value, step = R.steps[s], r = step.replan >= 0 ? R.replans[step.replan] : null;
  const fc = $("frame").getContext("2d"); fc.imageSmoothingEnabled = false;
  const paint = () => fc.drawImage(images[s], 0, 0, 240, 240);
  images[s].complete ? paint() : images[s].onload = paint;
  if (goalImage) { const gc = $("goal").getContext("2d"); gc.imageSmoothingEnabled = false;
    const g = () => gc.drawImage(goalImage, 0, 0, 120, 120); goalImage.complete ? g() : goalImage.onload = g; }
  const it = r ? r.iterations[+iterIn.value] : null;
  // plane: candidates, plan, executed path, goal
  const v = view($("plane"), planeBox, R.y_down);
  if (it) {
    const sorted = it.costs.map((c, k) => k).sort((a, b) => it.costs[b] - it.costs[a]);
    const rank = new Map(sorted.map((k, i) => [k, 1 - i / Math.max(sorted.length - 1, 1)]));
    for (const pass of [0, 1]) for (const k of sorted) if (it.elite[k] === pass)
      line(v, it.paths[k], costColour(rank.get(k), pass ? 0.9 : 0.3), pass ? 2.2 : 1);
    line(v, r.plan, "#111", 1.8, [5, 4]);
  }
  line(v, R.steps.slice(0, s + 1).map(q => q.xy), "#888", 2);
  star(v, R.goal_xy); dot(v, step.xy, 5, "#111"); labels(v, R.axes);
  // latent map
  const m = view($("map"), mapBox, false);
  line(m, R.steps.map(q => q.map), "#ddd", 1.5); line(m, R.steps.slice(0, s + 1).map(q => q.map), "#888", 2);
  if (r) line(m, r.plan_map, "#111", 1.5, [5, 4]);
  star(m, R.goal_map); dot(m, step.map, 5, "#d32f2f"); labels(m, ["PC 1", "PC 2"]);
  $("info").textContent = "step " + s + "/" + (R.steps.length - 1) + (r ? " \u00b7 replan " + step.replan +
    " (at step " + r.step + ")" +
    (r.reproduced ? "" : " \u00b7 replay differs from the executed plan") : " \u00b7 before the first plan");
  $("iterinfo").textContent = it ? (+iterIn.value + 1) + "/" + r.iterations.length + " \u00b7 best cost " +
    Math.min(...it.costs).toPrecision(4) + " \u00b7 " + it.costs.length + " of the candidates shown" : "";
}
function setStep(s) {  // a new step shows its replan's last iteration
  stepIn.value = s;
  const j = R.steps[s].replan;
  iterIn.max = j >= 0 ? R.replans[j].iterations.length - 1 : 0;
  iterIn.value = iterIn.max;
  draw();
}
stepIn.oninput = () => setStep(+stepIn.value); iterIn.oninput = draw;
let timer = null;
$("play").onclick = () => {
  if (timer) { clearInterval(timer); timer = null; $("play").textContent = "play"; return; }
  $("play").textContent = "pause";
  timer = setInterval(() => setStep((+stepIn.value + 1) % R.steps.length), 250);
};
setStep(0);
</script></body></html>
"""
