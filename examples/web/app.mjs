// The page's logic: load an exported model, explain dropped images, draw the heatmap.
// Everything runs here, in the browser; onnxruntime-web's .wasm comes from this server.
import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';

import { exportInfo, explain, labelOf, overlay, preprocess, readMetadata, topClass } from '../common/onnx-gradcam.mjs';

ort.env.wasm.wasmPaths = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency) : 1;
ort.env.logLevel = 'error'; // onnxruntime warns that the optional `target` is an initializer input

const $ = (id) => document.getElementById(id);
const state = { session: null, info: null, image: null };
/** For tests and the curious: the last explanation ({ cam, camDims, coarse, target, … }). */
window.onnxGradcam = { last: null, error: null, ready: null };

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
  if (error) window.onnxGradcam.error = text;
}

async function loadModel(bytes, name) {
  status(`Loading ${name}…`);
  state.info = exportInfo(readMetadata(bytes));
  state.session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], logSeverityLevel: 3 });
  const select = $('target');
  select.length = 1;
  const withTarget = state.session.inputNames.includes('target');
  $('target-box').hidden = !withTarget;
  const labels = state.info.labels ?? [];
  labels.forEach((label, i) => select.add(new Option(label, String(i + state.info.labelOffset))));
  status(`${name}: ${state.info.method} at ${state.info.layers.join(', ')} — drop an image.`);
  if (state.image) await run();
}

async function decode(file) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  const { data } = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  return { rgba: data, width: bitmap.width, height: bitmap.height };
}

function draw(canvas, rgba, width, height) {
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), width, height), 0, 0);
}

async function run() {
  if (!state.session) return;
  const { rgba, width, height } = state.image;
  const t0 = performance.now();
  const input = preprocess(rgba, width, height, state.info.preprocessing);
  const target = Number($('target').value);
  const result = await explain(ort, state.session, input.data, input.dims, target, state.info.scoreOutput);
  const ms = performance.now() - t0;
  const [, camH, camW] = result.camDims;
  draw($('overlay'), overlay(rgba, width, height, result.cam, camW, camH), width, height);
  const black = new Uint8ClampedArray(camW * camH * 4); // alpha 1: the colour map alone
  draw($('heat'), overlay(black, camW, camH, result.cam, camW, camH, 1.0), camW, camH);
  const top = topClass(result.scores, state.info);
  status(`top class: ${top.label} (${top.score.toFixed(3)}); heatmap of ${labelOf(result.target, state.info)}` +
         ` by ${state.info.method}, ${ms.toFixed(0)} ms`);
  window.onnxGradcam.last = { ...result, top, milliseconds: ms };
}

async function useImage(file) {
  if (!file) return;
  try {
    state.image = await decode(file);
    await run();
  } catch (err) {
    status(`error: ${err.message}`, true);
  }
}

$('drop').addEventListener('click', () => $('image-file').click());
$('image-file').addEventListener('change', (e) => useImage(e.target.files[0]));
$('drop').addEventListener('dragover', (e) => { e.preventDefault(); $('drop').classList.add('over'); });
$('drop').addEventListener('dragleave', () => $('drop').classList.remove('over'));
$('drop').addEventListener('drop', (e) => {
  e.preventDefault();
  $('drop').classList.remove('over');
  useImage(e.dataTransfer.files[0]);
});
$('target').addEventListener('change', () => state.image && run().catch((err) => status(`error: ${err.message}`, true)));
$('model-file').addEventListener('change', async (e) => {
  const file = e.target.files[0];
  if (file) await loadModel(new Uint8Array(await file.arrayBuffer()), file.name).catch((err) => status(`error: ${err.message}`, true));
});

// ?model=URL (default explain.onnx next to this page)
const url = new URLSearchParams(location.search).get('model') ?? 'explain.onnx';
window.onnxGradcam.ready = fetch(url)
  .then((r) => { if (!r.ok) throw new Error(`no model at ${url} (${r.status}): choose one above`); return r.arrayBuffer(); })
  .then((buf) => loadModel(new Uint8Array(buf), url.split('/').pop()))
  .catch((err) => status(err.message, true));
