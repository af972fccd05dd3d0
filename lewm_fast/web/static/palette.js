// The page's colours: candidates by cost rank on matplotlib's "plasma" map reversed (yellow = lowest cost, through
// orange and magenta, to purple = highest), and the two rooms of the latent PCA in contrasting blue and orange.

// plasma at 0, 1/8, ..., 1 (matplotlib.colormaps['plasma'], rounded to 0-255): dark purple -> yellow
const PLASMA = [[13, 8, 135], [76, 2, 161], [126, 3, 168], [170, 35, 149], [204, 71, 120], [230, 108, 92],
  [248, 149, 64], [253, 197, 39], [240, 249, 33]];

export const ROOM_RGB = { left: [33, 102, 172], right: [230, 97, 1] };

/** [r, g, b] of a cost rank `t` in [0, 1]: 0 (lowest cost) yellow, 1 (highest) purple. */
export function costRgb(t) {
  const u = (1 - Math.min(1, Math.max(0, t))) * (PLASMA.length - 1);
  const k = Math.min(PLASMA.length - 2, Math.floor(u)), f = u - k;
  return PLASMA[k].map((v, c) => Math.round(v + f * (PLASMA[k + 1][c] - v)));
}

/** A CSS colour of cost rank `t` (see costRgb). */
export function costColour(t, alpha = 1) {
  return `rgba(${costRgb(t).join(', ')}, ${alpha})`;
}

/** The legend's CSS gradient, low cost (left) to high (right), from the same map. */
export function costGradientCss() {
  const last = PLASMA.length - 1;
  const stops = PLASMA.map((_, k) => `${costColour(k / last)} ${(100 * k / last).toFixed(1)}%`);
  return `linear-gradient(to right, ${stops.join(', ')})`;
}
