// CEM over action sequences, as lewm_fast/reference/cem.py's CEMSolver: per iteration, candidates = randn * std + mean
// with candidate 0 = mean; costs from the model; elites = the topk lowest costs (stable order, NaN never preferred);
// mean, std = the elites' mean and unbiased std. The noise comes from a small seeded generator (not torch's). With
// action bounds in "clip" mode (the manifest's "action_bounds", lewm_fast/planning/bounds.py) every sampled candidate
// and every refitted mean is clamped into them, as the planners' clip_ does.

/** A seeded generator: uniform() in [0, 1) (mulberry32) and normal() (Box-Muller). */
export function makeRng(seed) {
  let state = seed >>> 0;
  let spare = null;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => {
    if (spare !== null) {
      const v = spare;
      spare = null;
      return v;
    }
    const u = 1 - uniform(), v = uniform(), r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
  return { uniform, normal };
}

/** Indices 0..n-1 sorted by cost, ties by index, NaN last (as +inf). */
export function argsort(costs) {
  const key = (v) => (Number.isNaN(v) ? Infinity : v);
  return Array.from(costs.keys()).sort((i, j) => key(costs[i]) - key(costs[j]) || i - j);
}

/**
 * Plan with CEM. `mean` (Float32Array horizon * width) warm-starts it; candidates are laid out
 * (samples, maxHorizon, width) with zeros after `horizon` blocks; `cost(candidates, samples)` resolves to
 * {costs: (samples, maxHorizon) prefix costs, latents} and the cost of a candidate is its prefix cost at `horizon`.
 * `bounds` ({low, high}: width values each, normalised units) or null: clamp candidates and means into them.
 * Resolves to {mean, std, candidates, costs, order, latents} of the last iteration (order: ascending cost).
 */
export async function cemPlan({ cost, mean, varScale, samples, topk, iterations, horizon, maxHorizon, width, rng,
  bounds = null }) {
  const size = horizon * width;
  const clamp = bounds ? (v, k) => Math.min(bounds.high[k % width], Math.max(bounds.low[k % width], v)) : (v) => v;
  mean = Float32Array.from(mean, clamp);
  let std = new Float32Array(size).fill(varScale);
  let last = null;
  for (let it = 0; it < iterations; it++) {
    const candidates = new Float32Array(samples * maxHorizon * width);
    for (let i = 0; i < samples; i++) {
      for (let k = 0; k < size; k++) {
        candidates[i * maxHorizon * width + k] = clamp(i === 0 ? mean[k] : mean[k] + std[k] * rng.normal(), k);
      }
    }
    const out = await cost(candidates, samples);
    const costs = Float64Array.from({ length: samples }, (_, i) => out.costs[i * maxHorizon + horizon - 1]);
    const order = argsort(costs);
    const elites = order.slice(0, topk);
    if (!elites.every((i) => Number.isFinite(costs[i]))) {
      throw new Error(`fewer than topk=${topk} candidates have a finite cost: the model diverged`);
    }
    const nextMean = new Float32Array(size), nextStd = new Float32Array(size);
    for (let k = 0; k < size; k++) {
      let sum = 0;
      for (const i of elites) sum += candidates[i * maxHorizon * width + k];
      const m = sum / topk;
      let sq = 0;
      for (const i of elites) sq += (candidates[i * maxHorizon * width + k] - m) ** 2;
      nextMean[k] = clamp(m, k);
      nextStd[k] = Math.sqrt(sq / (topk - 1));
    }
    mean = nextMean;
    std = nextStd;
    last = { candidates, costs, order, latents: out.latents };
  }
  return { mean, std, ...last };
}

/** The plan shifted left by one executed block, the last block zero (planning.base.warm_start). */
export function warmStart(plan, width) {
  const next = new Float32Array(plan.length);
  next.set(plan.subarray(width));
  return next;
}
