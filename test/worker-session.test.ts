// A session in a worker thread gives the same results as in-process, and the event loop stays free.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Graph } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { serialize } from '../src/graph/onnx.js';
import { WorkerSession } from '../src/runtime/worker-session.js';

test('WorkerSession runs a model off the main thread', async () => {
  const g = new Graph('w');
  const x = g.input('x', ['N', 256]);
  let h = x;
  for (let i = 0; i < 20; i++) h = o.tanh(o.matmul(h, o.constant(g, new Float32Array(256 * 256).fill(1 / 256), [256, 256])));
  const bytes = serialize(g, { outputs: [g.rename(h, 'y')] });
  const ws = await WorkerSession.create(bytes, { threads: 1 });
  try {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const xs = new Float32Array(2048 * 256).fill(0.5);
    const runs = await Promise.all([0, 1, 2].map(() => ws.run({ x: { data: xs, shape: [2048, 256] } })));
    clearInterval(timer);
    assert.deepEqual(runs[0]!.y!.shape, [2048, 256]);
    assert.ok(Math.abs((runs[0]!.y!.data as Float32Array)[0]! - Math.tanh(Math.tanh(0.5))) < 0.5);
    assert.ok(ticks > 0, 'the event loop ran while the worker computed');
    await assert.rejects(ws.run({ x: { data: new Float32Array(3), shape: [1, 3] } }), /Got invalid dimensions|dimension|input/i);
  } finally {
    await ws.close();
  }
});
