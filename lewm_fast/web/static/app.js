// The click-to-plan page: Two-Room in JavaScript (env.js), LeWM's encoder and CEM cost as ONNX graphs run by
// onnxruntime-web (WebAssembly in a worker; WebGPU on request), CEM in latent space (cem.js), or (mode "policy", when
// the export has idm.onnx) one GC-IDM forward pass per step. manifest.json, written by the export next to the graphs,
// holds the sizes, the action scaling and bounds, the env's constants and the PCA. Settings come from the inputs,
// with defaults overridable in the URL (?mode=plan|policy&samples=&topk=&iterations=&horizon=&budget=&seed=
// &agent=x,y&backend=wasm|webgpu|auto). window.lewm exposes the state (for tests and the curious).
//
// Play / pause: `running` is true exactly while the ▶ loop runs (the button shows ❚❚ then); a goal reached or the step
// budget used up ends the loop, and the status line always describes the current state (refreshStatus).

import { TwoRoom } from './env.js';
import { cemPlan, makeRng, warmStart } from './cem.js';
import { ROOM_RGB, costColour, costGradientCss } from './palette.js';

// budget: plan steps (one action block each) per goal, lewm-eval's default budget (50; there counted in env steps)
const DEFAULTS = {
  mode: 'plan', samples: 64, topk: 8, iterations: 4, horizon: 5, budget: 50, seed: 0, backend: 'wasm',
};
const PLAY = '▶', PAUSE = '❚❚'; // (⏸ is missing from many Linux fonts)
const VAR_SCALE = 1.0;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  ready: false, error: null, running: false, busy: false, reached: false, outOfBudget: false, steps: 0, envSteps: 0,
  agent: null, goal: null, trail: [], latentTrail: [], times: [], backend: null, threads: 1, settings: null,
  constants: null, goalLatent: null, mode: DEFAULTS.mode, lastBlock: null, // the last executed normalised action block
};
window.lewm = state;

let manifest, env, ort, sessions, rng, goalLatent = null, warm = null, lastPlan = null;
let context = [], executed = [], lastBlock = null; // the planner's context latents and the blocks between them
let loop = null; // the ▶ loop's promise while it runs

function fail(message) {
  state.error = message;
  state.running = false;
  $('error').textContent = message;
  $('error').hidden = false;
  $('status').textContent = 'error';
  $('play').textContent = PLAY;
  for (const id of ['play', 'step', 'reset']) $(id).disabled = true;
}

const setStatus = (text) => { $('status').textContent = text; };
const ms = (v) => `${v.toFixed(0)} ms`;
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const distance = () => Math.hypot(env.agent[0] - state.goal[0], env.agent[1] - state.goal[1]);

/** Start or stop the ▶ loop's flag; the button shows ❚❚ exactly while it is set, Step is disabled meanwhile. */
function setRunning(on) {
  state.running = on;
  $('play').textContent = on ? PAUSE : PLAY;
  $('play').title = on ? 'pause' : 'plan and act every step';
  $('step').disabled = on || !state.ready || Boolean(state.error);
}

/** Nothing left to do for this goal: reached, or the step budget used up. */
function finished() {
  state.outOfBudget = !state.reached && state.steps >= (state.settings?.budget ?? DEFAULTS.budget);
  return state.reached || state.outOfBudget;
}

/** The status line for the current state. */
function refreshStatus() {
  if (state.error) return;
  if (!goalLatent) return setStatus('click to place a goal');
  const done = finished(), { budget } = state.settings;
  if (state.reached) {
    const steps = `${plural(state.steps, 'step')} (${plural(state.envSteps, 'env step')})`;
    setStatus(state.steps ? `goal reached in ${steps}: click a new goal` : 'already at the goal: click elsewhere');
  } else if (done) {
    setStatus(`not reached within the budget of ${plural(budget, 'step')} (${distance().toFixed(0)} px away): ` +
      'click a new goal, raise the budget or Reset (a goal behind the wall needs a detour the latent cost ' +
      'does not see)');
  } else if (state.running) {
    setStatus(`planning… step ${state.steps + 1} of at most ${budget}`);
  } else {
    setStatus(state.steps ? `paused after ${plural(state.steps, 'step')}: press ▶ or Step`
      : 'goal set: press ▶ (or Step)');
  }
}

async function fetchOk(name) {
  let response;
  try {
    response = await fetch(name);
  } catch (err) {
    throw new Error(`cannot fetch ${name}: ${err.message}`);
  }
  if (!response.ok) {
    throw new Error(`model file ${name} is missing (HTTP ${response.status}): export the model with ` +
      '"lewm-fast web" (or "lewm-fast export-onnx checkpoint=... out=<this folder>")');
  }
  return response;
}

/** onnxruntime-web: the WebGPU build when asked for or (auto) when an adapter is available, else the WASM build. */
async function loadRuntime(choice) {
  let gpu = false;
  if (choice !== 'wasm' && navigator.gpu) {
    gpu = Boolean(await navigator.gpu.requestAdapter().catch(() => null));
  }
  if (choice === 'webgpu' && !gpu) throw new Error('WebGPU is not available in this browser: choose backend wasm');
  const file = gpu ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs';
  let module;
  try {
    module = await import(`./ort/${file}`);
  } catch (err) {
    throw new Error(`onnxruntime-web (ort/${file}) failed to load: ${err.message}. The page expects it next to ` +
      'index.html; "lewm-fast web" copies it there from lewm_fast/web/node_modules (npm ci)');
  }
  module.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
  module.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  module.env.wasm.proxy = !gpu; // WASM inference in a worker: the page stays responsive while a step runs
  return { module, ep: gpu ? 'webgpu' : 'wasm' };
}

function readSettings() {
  const int = (id, lo, hi) => Math.min(hi, Math.max(lo, Math.round(Number($(id).value) || lo)));
  const samples = int('samples', 2, 2000);
  const s = { mode: $('mode').value, samples, topk: int('topk', 2, samples), iterations: int('iterations', 1, 100),
    horizon: int('horizon', 1, manifest.model.horizon), budget: int('budget', 1, 100000) };
  for (const [key, value] of Object.entries(s)) $(key).value = value;
  state.settings = s;
  state.mode = s.mode;
  $('settings').classList.toggle('policy', s.mode === 'policy');
  return s;
}

async function encode(position) {
  const size = manifest.model.image_size;
  const frames = new ort.Tensor('uint8', env.render(size, position), [1, size, size, 3]);
  const out = await sessions.encoder.run({ frames });
  return Float32Array.from(out.latents.data);
}

/** The planner graph on `samples` candidates: prefix costs (samples, T) and latents (samples, H+T, D). Every input
 *  is a fresh copy: the WASM proxy worker takes (detaches) the buffers it is sent. */
async function rollout(candidates, samples) {
  const { history, horizon, action_block: a, latent_dim: d } = manifest.model;
  const feeds = {
    context: new ort.Tensor('float32', Float32Array.from(context.flatMap((z) => [...z])), [history, d]),
    action_history: new ort.Tensor('float32', Float32Array.from(executed.flatMap((b) => [...b])), [history - 1, a]),
    candidates: new ort.Tensor('float32', candidates.slice(), [samples, horizon, a]),
    goal: new ort.Tensor('float32', goalLatent.slice(), [d]),
  };
  const inputs = Object.fromEntries(sessions.planner.inputNames.map((name) => [name, feeds[name]]));
  const out = await sessions.planner.run(inputs);
  return { costs: out.costs.data, latents: out.latents.data };
}

/** The GC-IDM's next normalised action block for `latent` (manifest "idm"): remaining = k / K with k the blocks left
 *  to the goal counted down from K by the blocks executed since the goal was set, at least 1 (lewm-eval's
 *  IDMPolicy). */
async function idmBlock(latent) {
  const { horizon } = manifest.idm, d = manifest.model.latent_dim;
  const remaining = Math.max(1, horizon - state.steps) / horizon;
  const out = await sessions.idm.run({
    z: new ort.Tensor('float32', latent.slice(), [1, d]),
    goal: new ort.Tensor('float32', goalLatent.slice(), [1, d]),
    remaining: new ort.Tensor('float32', Float32Array.of(remaining), [1]),
  });
  return Float32Array.from(out.block.data);
}

/** Keep the last H latents and the H-1 action blocks between them; at the start, repeat the first latent with zero
 *  blocks until the window is full. */
function pushContext(latent) {
  const { history, action_block: a } = manifest.model;
  if (context.length === 0) {
    context = Array(history).fill(latent);
    executed = Array(history - 1).fill(new Float32Array(a));
  } else {
    context = [...context.slice(1), latent];
    executed = history > 1 ? [...executed.slice(1), lastBlock] : [];
  }
}

/** The manifest's action bounds when the page's CEM clamps into them (mode "clip"), else null: in "penalty" mode
 *  planner.onnx adds the penalty to the costs, "none" and exports without the key have no bounds. */
function clipBounds() {
  return manifest.action_bounds?.mode === 'clip' ? manifest.action_bounds : null;
}

/** A normalised block (frameskip * env action dim) -> env actions, clipped to [-1, 1] (evaluation.ActionCodec). */
function toEnvActions(block) {
  const { frameskip, env_action_dim: n } = manifest.model, { mean, std } = manifest.action;
  return Array.from({ length: frameskip }, (_, k) => Array.from({ length: n }, (_, j) => {
    const i = k * n + j;
    return Math.min(1, Math.max(-1, block[i] * std[i] + mean[i]));
  }));
}

/** One step: encode the frame, plan, execute the first block. Does nothing when busy, without a goal or when the
 *  goal is finished (reached or out of budget). */
async function step() {
  if (!state.ready || state.busy || !goalLatent || state.error || finished()) return;
  state.busy = true;
  if (!state.running) setStatus('planning…');
  try {
    const settings = readSettings();
    const a = manifest.model.action_block;
    const t0 = performance.now();
    const latent = await encode(env.agent);
    const t1 = performance.now();
    pushContext(latent);
    if (!warm || warm.length !== settings.horizon * a) warm = new Float32Array(settings.horizon * a);
    const from = [...env.agent];
    const policy = settings.mode === 'policy';
    const plan = policy ? null : await cemPlan({ cost: rollout, mean: warm, varScale: VAR_SCALE, rng, width: a,
      maxHorizon: manifest.model.horizon, bounds: clipBounds(), ...settings });
    const block = policy ? await idmBlock(latent) : plan.mean.slice(0, a);
    const t2 = performance.now();
    for (const action of toEnvActions(block)) {
      env.step(action);
      state.envSteps += 1;
      state.trail.push([...env.agent]);
      if (env.isSuccess(state.goal)) {
        state.reached = true;
        break;
      }
    }
    lastBlock = block;
    state.lastBlock = Array.from(block);
    warm = policy ? null : warmStart(plan.mean, a);
    state.steps += 1;
    state.agent = [...env.agent];
    state.latentTrail.push(latent);
    state.times.push({ encode: t1 - t0, plan: t2 - t1 });
    lastPlan = policy ? null : { ...plan, from, settings };
    $('steps').textContent = `${state.steps} (${state.envSteps} env steps)`;
    $('encode-ms').textContent = ms(t1 - t0);
    $('plan-ms').textContent = policy ? `${ms(t2 - t1)} (one IDM pass)`
      : `${ms(t2 - t1)} (${settings.iterations} × ${ms((t2 - t1) / settings.iterations)})`;
    $('cost').textContent = policy ? '–' : plan.costs[plan.order[0]].toFixed(3);
    draw();
  } catch (err) {
    fail(`planning failed: ${err.message}`);
  } finally {
    state.busy = false;
    refreshStatus();
  }
}

/** The ▶ loop: steps while `running` and the goal is not finished; clears `running` when it ends. One at a time: a
 *  ▶ after a pause while the last step is still in flight continues the same loop. */
function run() {
  loop ??= (async () => {
    try {
      while (state.running && !state.error && !finished()) {
        refreshStatus();
        await step();
        // paint, then yield to the task queue (a rendering-only wait would starve other tasks between steps)
        await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
      }
    } finally {
      loop = null;
      if (!state.error) setRunning(false);
      refreshStatus();
    }
  })();
  return loop;
}

// ------------------------------------------------------------------------------------------------------ drawing
const frameCanvas = document.createElement('canvas');
let pcaUnderlay = null; // the training frames' density per room, drawn once (a canvas of the PCA plot's size)

/** The frame positions a candidate's blocks would visit from `from` (the env's own collisions). */
function candidatePath(candidates, i, settings, from) {
  const { action_block: a, horizon } = manifest.model;
  let p = from;
  const path = [p];
  for (let t = 0; t < settings.horizon; t++) {
    const offset = (i * horizon + t) * a;
    for (const action of toEnvActions(candidates.subarray(offset, offset + a))) {
      p = env.move(p, [action[0] * env.speed, action[1] * env.speed]);
    }
    path.push(p);
  }
  return path;
}

function polyline(ctx, points, scale) {
  ctx.beginPath();
  points.forEach(([x, y], k) => (k ? ctx.lineTo(x * scale, y * scale) : ctx.moveTo(x * scale, y * scale)));
  ctx.stroke();
}

function drawWorld() {
  const canvas = $('env'), ctx = canvas.getContext('2d'), frame = manifest.env.constants.FRAME;
  const scale = canvas.width / frame;
  const rgb = env.render(frame);
  frameCanvas.width = frameCanvas.height = frame;
  const image = new ImageData(frame, frame);
  for (let i = 0; i < frame * frame; i++) {
    image.data.set([rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], 255], 4 * i);
  }
  frameCanvas.getContext('2d').putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(frameCanvas, 0, 0, canvas.width, canvas.height);
  if (lastPlan) {
    const { candidates, order, settings, from } = lastPlan;
    ctx.lineWidth = 1;
    const others = Math.max(1, order.length - settings.topk - 1);
    for (let r = order.length - 1; r >= settings.topk; r--) { // the highest cost first, the lowest on top
      ctx.strokeStyle = costColour((r - settings.topk) / others, 0.6);
      polyline(ctx, candidatePath(candidates, order[r], settings, from), scale);
    }
    ctx.lineWidth = 2;
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.95)';
    ctx.shadowColor = '#000';
    ctx.shadowBlur = 3;
    for (let r = 0; r < settings.topk; r++) polyline(ctx, candidatePath(candidates, order[r], settings, from), scale);
    ctx.shadowBlur = 0;
  }
  ctx.strokeStyle = 'rgba(160, 0, 0, 0.8)';
  ctx.lineWidth = 1.5;
  if (state.trail.length > 1) polyline(ctx, state.trail, scale);
  if (state.goal) {
    const [gx, gy] = state.goal;
    ctx.strokeStyle = '#0a0';
    ctx.lineWidth = 2;
    ctx.setLineDash([5, 4]);
    ctx.beginPath();
    ctx.arc(gx * scale, gy * scale, manifest.env.constants.SUCCESS_DISTANCE * scale, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = '#0a0';
    ctx.fillRect(gx * scale - 3, gy * scale - 3, 6, 6);
  }
}

/** Each room's density of the training frames' PCA points (a histogram on a 1/4-resolution grid, smoothed by a
 *  3-cell box filter twice): the colour is the rooms' colours weighted by their densities, the opacity grows with the
 *  total, so where the rooms overlap the mix shows it. */
function densityUnderlay(width, height, points, to, rightRoom) {
  const cell = 4, gw = Math.ceil(width / cell), gh = Math.ceil(height / cell);
  const grids = [new Float32Array(gw * gh), new Float32Array(gw * gh)];
  for (const p of points) {
    const [x, y] = to(p), q = Math.floor(x / cell), r = Math.floor(y / cell);
    if (q >= 0 && q < gw && r >= 0 && r < gh) grids[rightRoom(p) ? 1 : 0][r * gw + q] += 1;
  }
  const blur = (g) => {
    for (let pass = 0; pass < 4; pass++) { // horizontal, vertical, horizontal, vertical
      const out = new Float32Array(g.length), horizontal = pass % 2 === 0;
      for (let r = 0; r < gh; r++) {
        for (let q = 0; q < gw; q++) {
          let sum = 0;
          for (let k = -1; k <= 1; k++) {
            const qq = horizontal ? q + k : q, rr = horizontal ? r : r + k;
            if (qq >= 0 && qq < gw && rr >= 0 && rr < gh) sum += g[rr * gw + qq];
          }
          out[r * gw + q] = sum / 3;
        }
      }
      g = out;
    }
    return g;
  };
  const [left, right] = grids.map(blur);
  let peak = 0;
  for (let i = 0; i < left.length; i++) peak = Math.max(peak, left[i] + right[i]);
  const image = new ImageData(gw, gh);
  for (let i = 0; i < left.length; i++) {
    const total = left[i] + right[i];
    if (!total) continue;
    const mix = ROOM_RGB.left.map((v, c) => (left[i] * v + right[i] * ROOM_RGB.right[c]) / total);
    image.data.set([...mix, Math.round(255 * 0.7 * Math.sqrt(total / peak))], 4 * i);
  }
  const small = document.createElement('canvas');
  small.width = gw;
  small.height = gh;
  small.getContext('2d').putImageData(image, 0, 0);
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, width, height);
  return canvas;
}

function drawPca() {
  const canvas = $('pca'), ctx = canvas.getContext('2d'), pca = manifest.pca;
  const project = (z) => pca.components.map((c) => c.reduce((s, w, k) => s + w * (z[k] - pca.mean[k]), 0));
  const xs = pca.points.map((p) => p[0]), ys = pca.points.map((p) => p[1]);
  const pad = 0.08, lo = [Math.min(...xs), Math.min(...ys)], hi = [Math.max(...xs), Math.max(...ys)];
  const span = [hi[0] - lo[0] || 1, hi[1] - lo[1] || 1];
  const to = ([x, y]) => [canvas.width * (pad + (1 - 2 * pad) * (x - lo[0]) / span[0]),
    canvas.height * (1 - pad - (1 - 2 * pad) * (y - lo[1]) / span[1])];
  const wall = manifest.env.constants.WALL_X, rightRoom = (p) => p.length > 2 && p[2] >= wall;
  pcaUnderlay ??= densityUnderlay(canvas.width, canvas.height, pca.points, to, rightRoom);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(pcaUnderlay, 0, 0);
  // the points in an order that interleaves the rooms (neither is drawn on top of the other), each with a white rim
  const order = pca.points.map((_, i) => i).sort((i, j) => ((i * 0.618034) % 1) - ((j * 0.618034) % 1));
  for (const i of order) {
    const p = pca.points[i], [x, y] = to(p);
    ctx.fillStyle = 'rgba(255, 255, 255, 0.7)';
    ctx.fillRect(x - 2, y - 2, 4, 4);
    ctx.fillStyle = `rgba(${(rightRoom(p) ? ROOM_RGB.right : ROOM_RGB.left).join(', ')}, 0.85)`;
    ctx.fillRect(x - 1.25, y - 1.25, 2.5, 2.5);
  }
  const dot = (z, colour, radius) => {
    const [x, y] = to(project(z));
    ctx.fillStyle = colour;
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.fill();
  };
  if (lastPlan) {
    const { history, horizon, latent_dim: d } = manifest.model, rows = history + horizon;
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.9)';
    ctx.shadowColor = '#000';
    ctx.shadowBlur = 2;
    for (const i of lastPlan.order.slice(0, lastPlan.settings.topk)) {
      const path = [];
      for (let r = history - 1; r < history + lastPlan.settings.horizon; r++) {
        path.push(to(project(lastPlan.latents.subarray((i * rows + r) * d, (i * rows + r + 1) * d))));
      }
      polyline(ctx, path, 1);
    }
    ctx.shadowBlur = 0;
  }
  ctx.strokeStyle = 'rgba(200, 0, 0, 0.7)';
  ctx.lineWidth = 1.5;
  if (state.latentTrail.length > 1) polyline(ctx, state.latentTrail.map((z) => to(project(z))), 1);
  if (goalLatent) dot(goalLatent, '#0a0', 6);
  if (state.latentTrail.length) dot(state.latentTrail[state.latentTrail.length - 1], '#d00', 5);
  ctx.fillStyle = '#333';
  ctx.font = '11px system-ui';
  const pct = (k) => (100 * pca.explained_variance_ratio[k]).toFixed(0);
  ctx.fillText(`PC 1 (${pct(0)} %) →`, canvas.width - 90, canvas.height - 6);
  ctx.save();
  ctx.translate(12, 90);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(`PC 2 (${pct(1)} %) →`, 0, 0);
  ctx.restore();
}

function draw() {
  drawWorld();
  drawPca();
  if (state.goal) {
    const [x, y] = env.agent, [gx, gy] = state.goal;
    $('distance').textContent = `${Math.hypot(x - gx, y - gy).toFixed(1)} px ` +
      `(success < ${manifest.env.constants.SUCCESS_DISTANCE})`;
  }
}

// ----------------------------------------------------------------------------------------------------- controls
/** A new episode from `start`, or from a random position inside the borders (CLEAR: the agent's disc clear of the
 *  border lines) and outside the wall's reach; the goal stays. */
function resetEpisode(start) {
  env.agent = start || env.sampleAgent(rng, manifest.env.constants.CLEAR);
  Object.assign(state, { agent: [...env.agent], trail: [[...env.agent]], latentTrail: [], steps: 0, envSteps: 0,
    times: [], reached: Boolean(state.goal) && env.isSuccess(state.goal) });
  context = [];
  executed = [];
  lastBlock = null;
  warm = null;
  lastPlan = null;
  $('steps').textContent = '0';
  draw();
  refreshStatus();
}

/** Resolves once no step is in flight (a click or a reset during a run waits for the current step). */
async function whenIdle() {
  while (state.busy) await new Promise((resolve) => setTimeout(resolve, 10));
}

async function placeGoal(event) {
  if (!state.ready) return;
  const box = $('env').getBoundingClientRect(), frame = manifest.env.constants.FRAME;
  const [lo, hi] = manifest.env.constants.CLEAR;
  const goal = [(event.clientX - box.left) / box.width * frame, (event.clientY - box.top) / box.height * frame]
    .map((v) => Math.min(hi, Math.max(lo, v)));
  if (env.inWall(goal)) {
    setStatus('that is inside the wall: click in a room or the door');
    return;
  }
  await whenIdle();
  state.busy = true;
  try {
    goalLatent = await encode(goal);
  } finally {
    state.busy = false;
  }
  // a new goal starts its own count of steps (and budget); the agent, its trail and its context stay
  Object.assign(state, { goal, goalLatent: Array.from(goalLatent), reached: env.isSuccess(goal), steps: 0, envSteps: 0,
    times: [] });
  warm = null;
  lastPlan = null;
  $('steps').textContent = '0';
  refreshStatus(); // a running ▶ loop goes on towards the new goal
  draw();
}

function togglePlay() {
  if (!goalLatent) {
    setStatus('click to place a goal first');
    return;
  }
  if (!state.running && finished()) { // nothing to run: say why, keep ▶
    refreshStatus();
    return;
  }
  setRunning(!state.running);
  if (state.running) run();
  refreshStatus();
}

async function main() {
  if (typeof WebAssembly !== 'object' || typeof WebAssembly.instantiate !== 'function') {
    fail('This browser has no WebAssembly, which onnxruntime-web needs to run the model: use a current Chrome, ' +
      'Edge, Firefox or Safari with WebAssembly enabled.');
    return;
  }
  try {
    manifest = await (await fetchOk('manifest.json')).json();
    if (!manifest.env || manifest.env.name !== 'two_room' || !manifest.env.constants) {
      throw new Error(`this page plays Two-Room, but the exported model was trained on ${manifest.env?.name}`);
    }
    const choice = params.get('backend') || DEFAULTS.backend;
    $('backend').value = choice;
    const bytes = (name) => fetchOk(name).then((r) => r.arrayBuffer());
    const [encoderBytes, plannerBytes, idmBytes, runtime] = await Promise.all([bytes('encoder.onnx'),
      bytes('planner.onnx'), manifest.idm ? bytes(manifest.idm.file) : null, loadRuntime(choice)]);
    ort = runtime.module;
    const options = { executionProviders: [runtime.ep], graphOptimizationLevel: 'all' };
    const session = (b) => ort.InferenceSession.create(new Uint8Array(b), options);
    sessions = { encoder: await session(encoderBytes), planner: await session(plannerBytes),
      idm: idmBytes && await session(idmBytes) };
    Object.assign(state, { backend: runtime.ep, threads: ort.env.wasm.numThreads });
    $('runtime').textContent = `onnxruntime-web ${ort.env.versions?.web ?? ''} ${runtime.ep}` +
      (runtime.ep === 'wasm' ? `, ${state.threads} thread${state.threads > 1 ? 's' : ''}` : '');
    const bounds = manifest.action_bounds;
    const box = (b) => b.low.slice(0, manifest.model.env_action_dim)
      .map((v, j) => `[${v.toFixed(2)}, ${b.high[j].toFixed(2)}]`).join(' × ');
    $('bounds').textContent = !bounds || bounds.mode === 'none' ? 'none'
      : `${bounds.mode} (the env's box: ${box(bounds)} per action)`;
  } catch (err) {
    fail(err.message);
    return;
  }
  env = new TwoRoom(manifest.env);
  state.constants = manifest.env.constants;
  const seed = Number(params.get('seed') ?? DEFAULTS.seed);
  rng = makeRng(seed);
  for (const key of ['samples', 'topk', 'iterations', 'horizon', 'budget']) {
    $(key).value = params.get(key) ?? Math.min(DEFAULTS[key], key === 'horizon' ? manifest.model.horizon : Infinity);
  }
  $('mode').querySelector('[value=policy]').disabled = !sessions.idm;
  if (!sessions.idm) $('mode').title = 'policy needs idm.onnx: export a run with a GC-IDM (lewm-train-idm)';
  $('mode').value = sessions.idm && params.get('mode') === 'policy' ? 'policy' : 'plan';
  $('horizon').max = manifest.model.horizon;
  readSettings();
  const start = params.get('agent')?.split(',').map(Number);
  resetEpisode(start && start.length === 2 && start.every(Number.isFinite) ? start : null);
  $('env').addEventListener('click', (event) => placeGoal(event).catch((err) => fail(err.message)));
  $('play').addEventListener('click', togglePlay);
  $('step').addEventListener('click', () => step());
  $('reset').addEventListener('click', async () => {
    setRunning(false);
    await whenIdle();
    resetEpisode(null);
  });
  for (const key of ['mode', 'samples', 'topk', 'iterations', 'horizon', 'budget']) {
    $(key).addEventListener('change', () => { readSettings(); refreshStatus(); });
  }
  $('cost-legend').style.background = costGradientCss();
  $('backend').addEventListener('change', () => {
    params.set('backend', $('backend').value);
    location.search = params.toString();
  });
  state.ready = true;
  for (const id of ['play', 'reset']) $(id).disabled = false;
  setRunning(false);
  refreshStatus();
}

main();
