// Parity with OpenAI's CLIP (clip/model.py on PyTorch 1.13): fixtures from test/reference/gen_clip.py.
// Two tiny random configurations with every parameter perturbed away from its initial value.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { SafetensorsFile } from '../src/checkpoint/safetensors.js';
import { loadClip } from '../src/index.js';
import { maxAbsDiff } from './helpers.js';

const FIX = new URL('../../test/reference/fixtures/', import.meta.url).pathname;

async function io(cfg: string) {
  const st = await SafetensorsFile.open(join(FIX, `clip_${cfg}_io.safetensors`));
  const r = {
    images: { data: await st.readFloat32('images'), shape: st.info('images').shape },
    tokens: { data: await st.readInt64('tokens'), shape: st.info('tokens').shape },
    image: await st.readFloat32('image_features'),
    text: await st.readFloat32('text_features'),
    logits: await st.readFloat32('logits_per_image'),
  };
  await st.close();
  return r;
}

for (const cfg of ['a', 'b']) {
  const meta = JSON.parse(readFileSync(join(FIX, `clip_${cfg}.json`), 'utf8'));

  test(`config ${cfg}: image and text features match PyTorch within 1e-4`, async () => {
    const model = await loadClip(join(FIX, `clip_${cfg}.safetensors`), { config: meta.openclip_config });
    const ref = await io(cfg);
    const img = await model.encodeImage(ref.images);
    const txt = await model.encodeText(ref.tokens);
    assert.deepEqual(img.shape, [ref.images.shape[0], meta.openclip_config.embed_dim]);
    const di = maxAbsDiff(img.data, ref.image);
    const dt = maxAbsDiff(txt.data, ref.text);
    assert.ok(di < 1e-4, `image features differ by ${di}`);
    assert.ok(dt < 1e-4, `text features differ by ${dt}`);
    // Int32 tokens give the same result as int64.
    const t32 = await model.encodeText({ data: Int32Array.from(ref.tokens.data, Number), shape: ref.tokens.shape });
    assert.ok(maxAbsDiff(t32.data, txt.data) === 0);
  });

  test(`config ${cfg}: architecture inferred from tensor shapes when no config is given`, async (t) => {
    const model = await loadClip(join(FIX, `clip_${cfg}.safetensors`));
    // build_model's rule is heads = width / 64: right for the vision tower here, but the fixtures'
    // text towers use other head counts, so only the image features can be compared.
    t.diagnostic(`inferred text heads ${model.config.text.heads} (fixture: ${meta.openclip_config.text_cfg.heads})`);
    const ref = await io(cfg);
    const img = await model.encodeImage(ref.images);
    assert.ok(maxAbsDiff(img.data, ref.image) < 1e-4);
  });

  test(`config ${cfg}: save in OpenAI and HF naming, reload: lossless round trip`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'clipkit-rt-'));
    try {
      const model = await loadClip(join(FIX, `clip_${cfg}.safetensors`), { config: meta.openclip_config });
      const ref = await io(cfg);
      for (const naming of ['openai', 'hf'] as const) {
        for (const target of [join(dir, `m-${naming}.safetensors`), join(dir, `dir-${naming}`)]) {
          await model.save(target, { naming });
          const back = await loadClip(target);
          assert.deepEqual(back.config, model.config, `${naming} ${target}: config`);
          for (const [k, v] of model.params) assert.deepEqual(back.params.get(k), v, `${naming}: ${k}`);
          const txt = await back.encodeText(ref.tokens);
          assert.ok(maxAbsDiff(txt.data, ref.text) < 1e-4);
        }
      }
      const hf = await SafetensorsFile.open(join(dir, 'dir-hf', 'model.safetensors'));
      assert.ok(hf.tensors.has('vision_model.encoder.layers.0.self_attn.q_proj.weight'));
      assert.ok(hf.tensors.has('visual_projection.weight'));
      await hf.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('bad inputs to the encoders are clear errors', async () => {
  const meta = JSON.parse(readFileSync(join(FIX, 'clip_a.json'), 'utf8'));
  const model = await loadClip(join(FIX, 'clip_a.safetensors'), { config: meta.openclip_config });
  await assert.rejects(model.encodeImage({ data: new Float32Array(3 * 16 * 16), shape: [1, 3, 16, 16] }), /expected shape \[N, 3, 32, 32\]/);
  await assert.rejects(model.encodeText({ data: new Int32Array(20), shape: [1, 20] }), /1 ≤ L ≤ 16/);
  await assert.rejects(model.encodeText({ data: Int32Array.of(98, 500, 99), shape: [1, 3] }), /token id 500 at \[0, 1\] is outside the vocabulary \[0, 100\)/);
  await assert.rejects(loadClip(join(FIX, 'clip_a.json')), /not a \.safetensors file or a model directory/);
  await assert.rejects(loadClip(join(FIX, 'clip_a.safetensors'), { config: { ...meta.openclip_config, embed_dim: 16 } }), /'visual.proj' has 2048 values.*needs \[64,16\]/);
});
