// The click-to-plan page: Two-Room in JavaScript (env.js), LeWM's encoder and CEM cost as ONNX graphs run by
// onnxruntime-web (WebAssembly; WebGPU where available), CEM in latent space (cem.js). manifest.json, written by the
// export next to encoder.onnx and planner.onnx, holds the sizes, the action scaling, the env's constants and the PCA.
// Settings come from the inputs, with defaults overridable in the URL (?samples=&topk=&iterations=&horizon=&seed=
// &agent=x,y&backend=wasm|webgpu|auto). window.lewm exposes the state (for tests and the curious).

import { TwoRoom } from './env.js';
import { cemPlan, makeRng, warmStart } from './cem.js';

const DEFAULTS = { samples: 64, topk: 8, iterations: 4, horizon: 5, seed: 0, backend: 'auto' };
const PLAY = '▶', PAUSE = '❚❚'; // (⏸ is missing from many Linux fonts)
const VAR_SCALE = 1.0;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  ready: false, error: null, running: false, busy: false, reached: false, steps: 0, envSteps: 0,
  agent: null, goal: null, trail: [], latentTrail: [], times: [], backend: null, threads: 1, settings: null,
};
window.lewm = state;

let manifest, env, ort, sessions, rng, goalLatent = null, warm = null, lastPlan = null;
let context = [], executed = [], lastBlock = null; // the planner's context latents and the blocks between them

function fail(message) {
  state.error = message;
  state.running = false;
  $('error').textContent = message;
  $('error').hidden = false;
  $('status').textContent = 'error';
  for (const id of ['play', 'step', 'reset']) $(id).disabled = true;
}

const setStatus = (text) => { $('status').textContent = text; };
const ms = (v) => `${v.toFixed(0)} ms`;

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
  return { module, ep: gpu ? 'webgpu' : 'wasm' };
}

function readSettings() {
  const int = (id, lo, hi) => Math.min(hi, Math.max(lo, Math.round(Number($(id).value) || lo)));
  const samples = int('samples', 2, 2000);
  const s = { samples, topk: int('topk', 2, samples), iterations: int('iterations', 1, 100),
    horizon: int('horizon', 1, manifest.model.horizon) };
  for (const [key, value] of Object.entries(s)) $(key).value = value;
  state.settings = s;
  return s;
}

async function encode(position) {
  const size = manifest.model.image_size;
  const frames = new ort.Tensor('uint8', env.render(size, position), [1, size, size, 3]);
  const out = await sessions.encoder.run({ frames });
  return Float32Array.from(out.latents.data);
}

/** The planner graph on `samples` candidates: prefix costs (samples, T) and latents (samples, H+T, D). */
async function rollout(candidates, samples) {
  const { history, horizon, action_block: a, latent_dim: d } = manifest.model;
  const feeds = {
    context: new ort.Tensor('float32', Float32Array.from(context.flatMap((z) => [...z])), [history, d]),
    action_history: new ort.Tensor('float32', Float32Array.from(executed.flatMap((b) => [...b])), [history - 1, a]),
    candidates: new ort.Tensor('float32', candidates, [samples, horizon, a]),
    goal: new ort.Tensor('float32', goalLatent, [d]),
  };
  const inputs = Object.fromEntries(sessions.planner.inputNames.map((name) => [name, feeds[name]]));
  const out = await sessions.planner.run(inputs);
  return { costs: out.costs.data, latents: out.latents.data };
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

/** A normalised block (frameskip * env action dim) -> env actions, clipped to [-1, 1] (evaluation.ActionCodec). */
function toEnvActions(block) {
  const { frameskip, env_action_dim: n } = manifest.model, { mean, std } = manifest.action;
  return Array.from({ length: frameskip }, (_, k) => Array.from({ length: n }, (_, j) => {
    const i = k * n + j;
    return Math.min(1, Math.max(-1, block[i] * std[i] + mean[i]));
  }));
}

async function step() {
  if (!state.ready || state.busy || !goalLatent || state.reached) return;
  state.busy = true;
  try {
    const settings = readSettings();
    const a = manifest.model.action_block;
    const t0 = performance.now();
    const latent = await encode(env.agent);
    const t1 = performance.now();
    pushContext(latent);
    if (!warm || warm.length !== settings.horizon * a) warm = new Float32Array(settings.horizon * a);
    const from = [...env.agent];
    const plan = await cemPlan({ cost: rollout, mean: warm, varScale: VAR_SCALE, rng, width: a,
      maxHorizon: manifest.model.horizon, ...settings });
    const t2 = performance.now();
    const block = plan.mean.slice(0, a);
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
    warm = warmStart(plan.mean, a);
    state.steps += 1;
    state.agent = [...env.agent];
    state.latentTrail.push(latent);
    state.times.push({ encode: t1 - t0, plan: t2 - t1 });
    lastPlan = { ...plan, from, settings };
    $('steps').textContent = `${state.steps} (${state.envSteps} env steps)`;
    $('encode-ms').textContent = ms(t1 - t0);
    $('plan-ms').textContent = `${ms(t2 - t1)} (${settings.iterations} × ${ms((t2 - t1) / settings.iterations)})`;
    $('cost').textContent = plan.costs[plan.order[0]].toFixed(3);
    if (state.reached) {
      state.running = false;
      setStatus(`goal reached in ${state.steps} steps (${state.envSteps} env steps)`);
    }
    draw();
  } catch (err) {
    fail(`planning failed: ${err.message}`);
  } finally {
    state.busy = false;
    $('play').textContent = state.running ? PAUSE : PLAY;
  }
}

async function run() {
  while (state.running && !state.reached && !state.error) {
    setStatus('planning…');
    await step();
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  if (!state.reached && !state.error) setStatus(goalLatent ? 'paused' : 'click to place a goal');
}

// ------------------------------------------------------------------------------------------------------ drawing
const frameCanvas = document.createElement('canvas');

function costColour(rank) {
  return `hsla(${55 + 215 * rank}, 90%, ${55 - 15 * rank}%, 0.35)`;
}

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
    for (let r = order.length - 1; r >= settings.topk; r--) {
      ctx.strokeStyle = costColour(r / order.length);
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

function drawPca() {
  const canvas = $('pca'), ctx = canvas.getContext('2d'), pca = manifest.pca;
  const project = (z) => pca.components.map((c) => c.reduce((s, w, k) => s + w * (z[k] - pca.mean[k]), 0));
  const xs = pca.points.map((p) => p[0]), ys = pca.points.map((p) => p[1]);
  const pad = 0.08, lo = [Math.min(...xs), Math.min(...ys)], hi = [Math.max(...xs), Math.max(...ys)];
  const span = [hi[0] - lo[0] || 1, hi[1] - lo[1] || 1];
  const to = ([x, y]) => [canvas.width * (pad + (1 - 2 * pad) * (x - lo[0]) / span[0]),
    canvas.height * (1 - pad - (1 - 2 * pad) * (y - lo[1]) / span[1])];
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const wall = manifest.env.constants.WALL_X;
  for (const p of pca.points) {
    const [x, y] = to(p);
    ctx.fillStyle = p.length > 2 && p[2] >= wall ? 'rgba(240, 140, 30, 0.35)' : 'rgba(40, 90, 220, 0.35)';
    ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
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
    $('distance').textContent = `${Math.hypot(x - gx, y - gy).toFixed(1)} px (success < ${manifest.env.constants.SUCCESS_DISTANCE})`;
  }
}

// ----------------------------------------------------------------------------------------------------- controls
function resetEpisode(start) {
  env.agent = start || env.sampleAgent(rng);
  Object.assign(state, { agent: [...env.agent], trail: [[...env.agent]], latentTrail: [], steps: 0, envSteps: 0,
    reached: Boolean(state.goal) && env.isSuccess(state.goal) });
  context = [];
  executed = [];
  lastBlock = null;
  warm = null;
  lastPlan = null;
  $('steps').textContent = '0';
  draw();
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
  state.goal = goal;
  state.reached = env.isSuccess(goal);
  warm = null;
  lastPlan = null;
  setStatus(state.reached ? 'already at the goal: click elsewhere' : 'goal set: press ▶ (or Step)');
  draw();
}

function togglePlay() {
  if (!goalLatent) {
    setStatus('click to place a goal first');
    return;
  }
  state.running = !state.running;
  $('play').textContent = state.running ? PAUSE : PLAY;
  if (state.running) run();
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
    const [encoderBytes, plannerBytes, runtime] = await Promise.all([
      fetchOk('encoder.onnx').then((r) => r.arrayBuffer()), fetchOk('planner.onnx').then((r) => r.arrayBuffer()),
      loadRuntime(choice)]);
    ort = runtime.module;
    const options = { executionProviders: [runtime.ep], graphOptimizationLevel: 'all' };
    sessions = {
      encoder: await ort.InferenceSession.create(new Uint8Array(encoderBytes), options),
      planner: await ort.InferenceSession.create(new Uint8Array(plannerBytes), options),
    };
    Object.assign(state, { backend: runtime.ep, threads: ort.env.wasm.numThreads });
    $('runtime').textContent = `onnxruntime-web ${ort.env.versions?.web ?? ''} ${runtime.ep}` +
      (runtime.ep === 'wasm' ? `, ${state.threads} thread${state.threads > 1 ? 's' : ''}` : '');
  } catch (err) {
    fail(err.message);
    return;
  }
  env = new TwoRoom(manifest.env);
  const seed = Number(params.get('seed') ?? DEFAULTS.seed);
  rng = makeRng(seed);
  for (const key of ['samples', 'topk', 'iterations', 'horizon']) {
    $(key).value = params.get(key) ?? Math.min(DEFAULTS[key], key === 'horizon' ? manifest.model.horizon : Infinity);
  }
  $('horizon').max = manifest.model.horizon;
  readSettings();
  const start = params.get('agent')?.split(',').map(Number);
  resetEpisode(start && start.length === 2 && start.every(Number.isFinite) ? start : null);
  $('env').addEventListener('click', (event) => placeGoal(event).catch((err) => fail(err.message)));
  $('play').addEventListener('click', togglePlay);
  $('step').addEventListener('click', () => step());
  $('reset').addEventListener('click', async () => {
    state.running = false;
    await whenIdle();
    resetEpisode(null);
  });
  $('backend').addEventListener('change', () => {
    params.set('backend', $('backend').value);
    location.search = params.toString();
  });
  for (const id of ['play', 'step', 'reset']) $(id).disabled = false;
  state.ready = true;
  setStatus('click to place a goal');
}

main();
