// onnx-gradcam in JavaScript: everything around a model written by `onnx-gradcam export`
// that is not ONNX: read its metadata, turn RGBA pixels into its input, feed it, and draw the
// heatmap like pytorch-grad-cam's show_cam_on_image. No dependencies; onnxruntime (node or
// web) is passed in, so Node.js (examples/node) and the browser (examples/web) share this file.

/** The model's metadata_props (ModelProto field 14) as a Map, read straight from the protobuf
 *  bytes: onnxruntime's JavaScript API does not expose them. */
export function readMetadata(bytes) {
  const props = new Map();
  let pos = 0;
  const varint = (buf) => {
    let value = 0, scale = 1, byte;
    do {
      byte = buf[pos++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
    } while (byte & 0x80);
    return value;
  };
  const text = new TextDecoder();
  const fields = (buf, start, end, visit) => {
    pos = start;
    while (pos < end) {
      const key = varint(buf);
      const field = Math.floor(key / 8), wire = key & 7;
      if (wire === 0) varint(buf);
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const length = varint(buf), at = pos;
        pos += length;
        visit(field, at, at + length);
      } else throw new Error(`not an ONNX model (protobuf wire type ${wire})`);
    }
  };
  fields(bytes, 0, bytes.length, (field, start, end) => {
    if (field !== 14) return;
    const saved = pos;
    let key = '', value = '';
    fields(bytes, start, end, (f, s, e) => {
      if (f === 1) key = text.decode(bytes.subarray(s, e));
      if (f === 2) value = text.decode(bytes.subarray(s, e));
    });
    props.set(key, value);
    pos = saved;
  });
  return props;
}

/** What an exported model says about itself: preprocessing, labels, method, target mode. */
export function exportInfo(props) {
  const json = props.get('onnx_gradcam.export.preprocessing');
  if (!json) throw new Error('this model has no onnx_gradcam.export.* metadata: export it with `onnx-gradcam export`');
  const labels = props.has('onnx_gradcam.labels') ? JSON.parse(props.get('onnx_gradcam.labels')) : null;
  return {
    preprocessing: JSON.parse(json),
    labels,
    labelOffset: Number(props.get('onnx_gradcam.label_offset') ?? 0),
    method: props.get('onnx_gradcam.export.method'),
    layers: JSON.parse(props.get('onnx_gradcam.export.layers') ?? '[]'),
    score: props.get('onnx_gradcam.export.score'),
    scoreOutput: props.get('onnx_gradcam.export.score_output'),
  };
}

/** Bilinear resize of interleaved pixels (channels per pixel) on half-pixel centres with edge
 *  clamping, as cv2.resize INTER_LINEAR; `round` rounds to integers as cv2 does for uint8. */
export function resizeBilinear(src, width, height, channels, outWidth, outHeight, round = true) {
  const out = new Float32Array(outWidth * outHeight * channels);
  const axis = (outSize, inSize) => {
    const low = new Int32Array(outSize), high = new Int32Array(outSize), frac = new Float32Array(outSize);
    const scale = inSize / outSize;
    for (let i = 0; i < outSize; i++) {
      let x = (i + 0.5) * scale - 0.5;
      let x0 = Math.floor(x);
      let f = x - x0;
      if (x0 < 0) { x0 = 0; f = 0; }
      if (x0 >= inSize - 1) { x0 = inSize - 1; f = 0; }
      low[i] = x0; high[i] = Math.min(x0 + 1, inSize - 1); frac[i] = f;
    }
    return { low, high, frac };
  };
  const xs = axis(outWidth, width), ys = axis(outHeight, height);
  for (let y = 0; y < outHeight; y++) {
    const r0 = ys.low[y] * width, r1 = ys.high[y] * width, fy = ys.frac[y];
    for (let x = 0; x < outWidth; x++) {
      const c0 = xs.low[x], c1 = xs.high[x], fx = xs.frac[x];
      for (let c = 0; c < channels; c++) {
        const top = src[(r0 + c0) * channels + c] * (1 - fx) + src[(r0 + c1) * channels + c] * fx;
        const bottom = src[(r1 + c0) * channels + c] * (1 - fx) + src[(r1 + c1) * channels + c] * fx;
        const v = top * (1 - fy) + bottom * fy;
        out[(y * outWidth + x) * channels + c] = round ? Math.round(v) : v;
      }
    }
  }
  return out;
}

/** RGBA pixels (any size) → the model's input (1, …) as a Float32Array plus its dims:
 *  resize to the model's size, x = (pixels · scale − mean) / std in its colour order and layout. */
export function preprocess(rgba, width, height, pre) {
  if (!pre.size) throw new Error('the exported model does not record its input size');
  const [H, W] = pre.size;
  const rgb = new Float32Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    rgb[i * 3] = rgba[i * 4]; rgb[i * 3 + 1] = rgba[i * 4 + 1]; rgb[i * 3 + 2] = rgba[i * 4 + 2];
  }
  const pixels = width === W && height === H ? rgb : resizeBilinear(rgb, width, height, 3, W, H);
  const order = pre.color === 'BGR' ? [2, 1, 0] : [0, 1, 2];
  const data = new Float32Array(H * W * 3);
  const nchw = pre.layout !== 'NHWC';
  for (let i = 0; i < H * W; i++) {
    for (let c = 0; c < 3; c++) {
      const v = (pixels[i * 3 + order[c]] * Math.fround(pre.scale) - pre.mean[c]) / pre.std[c];
      data[nchw ? c * H * W + i : i * 3 + c] = v;
    }
  }
  return { data, dims: nchw ? [1, 3, H, W] : [1, H, W, 3] };
}

/** Run an exported model on one input: { scores, cam, camDims, coarse, coarseDims, target }.
 *  `target` −1 (or null) = the argmax. A model exported with an optional `target` (the default)
 *  cannot take one from JavaScript: onnxruntime-node/-web do not feed initializer inputs. */
export async function explain(ort, session, data, dims, target = -1, scoreOutput = null) {
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, dims) };
  const wanted = target ?? -1;
  if (session.inputNames.includes('target')) {
    feeds.target = new ort.Tensor('int64', BigInt64Array.from([BigInt(wanted)]), [1]);
  } else if (wanted !== -1) {
    throw new Error('this model takes its target as an optional input, which onnxruntime\'s ' +
                    'JavaScript API cannot set: re-export it with `onnx-gradcam export --target-required`');
  }
  const out = await session.run(feeds);
  const scores = out[scoreOutput ?? session.outputNames[0]];
  const cam = out.cam ?? out.cam_coarse;
  return {
    scores: Float32Array.from(scores.data),
    cam: Float32Array.from(cam.data), camDims: cam.dims.map(Number),
    coarse: Float32Array.from(out.cam_coarse.data), coarseDims: out.cam_coarse.dims.map(Number),
    target: Number(out.cam_target.data[0]),
  };
}

const JET = Uint8Array.from(atob('AACAAACEAACIAACMAACQAACUAACYAACcAACgAACkAACoAACsAACwAAC0AAC4AAC8AADAAADEAADIAADMAADQAADUAADYAADcAADgAADkAADoAADsAADwAAD0AAD4AAD8AAD/AAT/AAj/AAz/ABD/ABT/ABj/ABz/ACD/ACT/ACj/ACz/ADD/ADT/ADj/ADz/AED/AET/AEj/AEz/AFD/AFT/AFj/AFz/AGD/AGT/AGj/AGz/AHD/AHT/AHj/AHz/AID/AIT/AIj/AIz/AJD/AJT/AJj/AJz/AKD/AKT/AKj/AKz/ALD/ALT/ALj/ALz/AMD/AMT/AMj/AMz/AND/ANT/ANj/ANz/AOD/AOT/AOj/AOz/APD/APT/APj/APz/Av/+Bv/6Cv/2Dv/yEv/uFv/qGv/mHv/iIv/eJv/aKv/WLv/SMv/ONv/KOv/GPv/CQv++Rv+6Sv+2Tv+yUv+uVv+qWv+mXv+iYv+eZv+aav+Wbv+Scv+Odv+Kev+Gfv+Cgv9+hv96iv92jv9ykv9ulv9qmv9mnv9iov9epv9aqv9Wrv9Ssv9Otv9Kuv9Gvv9Cwv8+xv86yv82zv8y0v8u1v8q2v8m3v8i4v8e5v8a6v8W7v8S8v8O9v8K+v8G/v8B//wA//gA//QA//AA/+wA/+gA/+QA/+AA/9wA/9gA/9QA/9AA/8wA/8gA/8QA/8AA/7wA/7gA/7QA/7AA/6wA/6gA/6QA/6AA/5wA/5gA/5QA/5AA/4wA/4gA/4QA/4AA/3wA/3gA/3QA/3AA/2wA/2gA/2QA/2AA/1wA/1gA/1QA/1AA/0wA/0gA/0QA/0AA/zwA/zgA/zQA/zAA/ywA/ygA/yQA/yAA/xwA/xgA/xQA/xAA/wwA/wgA/wQA/wAA/AAA+AAA9AAA8AAA7AAA6AAA5AAA4AAA3AAA2AAA1AAA0AAAzAAAyAAAxAAAwAAAvAAAuAAAtAAAsAAArAAAqAAApAAAoAAAnAAAmAAAlAAAkAAAjAAAiAAAhAAAgAAA'), (c) => c.charCodeAt(0));

/** pytorch-grad-cam's show_cam_on_image on RGBA pixels: heat = JET(uint8(255·cam)) (OpenCV's
 *  table), out = (1 − α)·img + α·heat, out /= max(out), uint8(255·out). The cam (camW×camH) is
 *  resized bilinearly to the image first. Returns new RGBA pixels. */
export function overlay(rgba, width, height, cam, camWidth, camHeight, alpha = 0.5) {
  const map = camWidth === width && camHeight === height ? cam
    : resizeBilinear(cam, camWidth, camHeight, 1, width, height, false);
  const mixed = new Float32Array(width * height * 3);
  let max = 0;
  for (let i = 0; i < width * height; i++) {
    const level = Math.trunc(255 * Math.min(1, Math.max(0, map[i])));
    for (let c = 0; c < 3; c++) {
      const v = (1 - alpha) * (rgba[i * 4 + c] / 255) + alpha * (JET[level * 3 + c] / 255);
      mixed[i * 3 + c] = v;
      if (v > max) max = v;
    }
  }
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) out[i * 4 + c] = Math.trunc(255 * mixed[i * 3 + c] / max);
    out[i * 4 + 3] = 255;
  }
  return out;
}

/** The top class of a score vector, with its label when the model has labels. */
export function topClass(scores, info) {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return { index: best, label: labelOf(best, info), score: scores[best] };
}

export function labelOf(index, info) {
  const i = index - (info.labelOffset ?? 0);
  return info.labels && i >= 0 && i < info.labels.length ? info.labels[i] : String(index);
}
