// Two-Room in JavaScript: the geometry, speed, collision and success rules and the renderer of
// lewm_fast/envs/two_room.py. Every number comes from that module: the export copies its constants and default
// options into manifest.json ("env"), so this file hardcodes none. Positions are pixels of the 224 frame (x right,
// y down), in float64 as in numpy; the renderer repeats numpy's float32 arithmetic (Math.fround) so that frames
// match the Python env's pixel for pixel (up to numpy's float32 exp, at most 1 grey level).

const f32 = Math.fround;
const clip = (v, lo, hi) => Math.min(Math.max(v, lo), hi);

export class TwoRoom {
  /** @param {{constants: Object, options: {speed: number, door_y: number, door_half_width: number}}} env */
  constructor(env) {
    this.c = env.constants;
    this.speed = env.options.speed;
    this.doorY = env.options.door_y;
    this.doorHalf = env.options.door_half_width;
    this.agent = [0, 0];
    this.backgrounds = new Map(); // frame side -> Uint8Array RGB
  }

  /** Whether an agent centred at height y may cross the wall. */
  inDoor(y) {
    return Math.abs(y - this.doorY) <= this.doorHalf + this.c.DOOR_MARGIN;
  }

  /** Whether a position lies in the wall's reach outside the door (where no agent can be). */
  inWall(p) {
    return this.c.REACH[0] <= p[0] && p[0] <= this.c.REACH[1] && !this.inDoor(p[1]);
  }

  /** Apply a displacement with border and wall collisions (TwoRoomEnv.move). */
  move(p, d) {
    const [lo, hi] = this.c.CLEAR;
    let x = clip(p[0] + d[0], lo, hi);
    const y = clip(p[1] + d[1], lo, hi);
    if (!this.inDoor(y)) {
      const reach = this.c.REACH;
      if (p[0] < this.c.WALL_X && x > reach[0]) x = reach[0] - this.c.PUSHBACK;
      else if (p[0] >= this.c.WALL_X && x < reach[1]) x = reach[1] + this.c.PUSHBACK;
    }
    return [x, y];
  }

  /** One env step: the action is clipped to [-1, 1] and moves the agent by speed * action pixels. */
  step(action) {
    const a = [clip(action[0], -1, 1), clip(action[1], -1, 1)];
    this.agent = this.move(this.agent, [a[0] * this.speed, a[1] * this.speed]);
    return this.agent;
  }

  /** Within SUCCESS_DISTANCE pixels of the goal position (TwoRoomEnv.is_success). */
  isSuccess(goal, position = this.agent) {
    const dx = position[0] - goal[0], dy = position[1] - goal[1];
    return Math.sqrt(dx * dx + dy * dy) < this.c.SUCCESS_DISTANCE;
  }

  /** A uniformly random start position in `range` on both axes, outside the wall's reach, from rng.uniform(). With
   *  SPAWN (the default) it is TwoRoomEnv.sample_agent, which, as stable-worldmodel, can put the agent's centre on the
   *  border line (SPAWN reaches 7 px beyond CLEAR; the first step moves it in); the page passes CLEAR. */
  sampleAgent(rng, range = this.c.SPAWN) {
    const [lo, hi] = range;
    for (;;) {
      const p = [lo + (hi - lo) * rng.uniform(), lo + (hi - lo) * rng.uniform()];
      if (!(this.c.REACH[0] <= p[0] && p[0] <= this.c.REACH[1])) return p;
    }
  }

  /** Pixel centres of a side-`size` frame in 224-frame coordinates (float32, as TwoRoomEnv._grid). */
  grid(size) {
    const scale = f32(this.c.FRAME / size);
    return Float32Array.from({ length: size }, (_, i) => f32(f32(f32(i + 0.5) * scale) - 0.5));
  }

  /** Border lines and the wall with its door, black on white: Uint8Array (size * size * 3) RGB. */
  background(size) {
    if (!this.backgrounds.has(size)) {
      const c = this.c, g = this.grid(size), image = new Uint8Array(size * size * 3).fill(255);
      const band = (v, lo) => v >= lo && v < lo + c.BORDER_LINE;
      const edge = (v) => band(v, c.BORDER - c.BORDER_LINE) || band(v, c.FRAME - c.BORDER);
      for (let r = 0; r < size; r++) {
        for (let q = 0; q < size; q++) {
          const x = g[q], y = g[r];
          const wall = Math.abs(f32(x - c.WALL_X)) <= c.WALL_HALF && Math.abs(f32(y - this.doorY)) > this.doorHalf;
          if (edge(x) || edge(y) || wall) image.fill(0, 3 * (r * size + q), 3 * (r * size + q) + 3);
        }
      }
      this.backgrounds.set(size, image);
    }
    return this.backgrounds.get(size);
  }

  /** The frame with the agent at `position`: a red Gaussian dot (std RADIUS) normalised to peak 1 over the frame,
   *  blended over the background in float32 and truncated to uint8 (TwoRoomEnv.render). */
  render(size, position = this.agent) {
    const c = this.c, g = this.grid(size), bg = this.background(size);
    const ax = f32(position[0]), ay = f32(position[1]), twoVar = f32(2 * c.RADIUS * c.RADIUS);
    const d2 = (v, centre) => { const d = f32(v - centre); return f32(d * d); };
    const dx2 = g.map((v) => d2(v, ax)), dy2 = g.map((v) => d2(v, ay));
    const dot = new Float32Array(size * size);
    let peak = 0;
    for (let r = 0; r < size; r++) {
      for (let q = 0; q < size; q++) {
        const v = f32(Math.exp(f32(-f32(dy2[r] + dx2[q]) / twoVar)));
        dot[r * size + q] = v;
        if (v > peak) peak = v;
      }
    }
    const rgb = c.AGENT_RGB, out = new Uint8Array(size * size * 3);
    for (let i = 0; i < size * size; i++) {
      const alpha = f32(dot[i] / peak), keep = f32(1 - alpha);
      for (let k = 0; k < 3; k++) {
        out[3 * i + k] = Math.trunc(f32(f32(bg[3 * i + k] * keep) + f32(rgb[k] * alpha)));
      }
    }
    return out;
  }
}
