// The inference worker: runs the device model with ONNX Runtime Web (WebGPU where the browser has an adapter,
// else wasm with SIMD, threads when the page is cross-origin isolated) on frames the page sends as RGBA pixels.
// Messages in: {type: "init", base, modelUrl, inputSize}, {type: "frame", id, rgba (ArrayBuffer)}.
// Messages out: {type: "ready", backend, threads, loadMs}, {type: "result", id, embedding, logits, inferMs},
// {type: "error", message}.

let ort = null;
let session = null;
let inputSize = 0;
let backend = "wasm";

async function hasWebGpu() {
  try {
    return Boolean(self.navigator.gpu && (await self.navigator.gpu.requestAdapter()));
  } catch (error) {
    return false;
  }
}

async function createSession(base, modelUrl) {
  const started = performance.now();
  const model = new Uint8Array(await (await fetch(modelUrl)).arrayBuffer());
  // Threads need cross-origin isolation; one core is left to the page (camera, drawing): on 2 cores one thread
  // ran a frame in 53 ms against 90 ms for two (headless Chromium, int8 Lite0, benchmarks/bench_live.py).
  const cores = self.navigator.hardwareConcurrency || 1;
  const threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, cores - 1)) : 1;
  if (await hasWebGpu()) {
    try {
      ort = await import(base + "ort/ort.webgpu.min.mjs");
      ort.env.wasm.wasmPaths = base + "ort/";
      ort.env.wasm.numThreads = threads;
      ort.env.logLevel = "error";
      session = await ort.InferenceSession.create(model, { executionProviders: ["webgpu", "wasm"], logSeverityLevel: 3 });
      backend = "webgpu";
    } catch (error) {
      session = null;  // the int8 graph or this GPU is not supported: wasm below
    }
  }
  if (!session) {
    ort = await import(base + "ort/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = base + "ort/";
    ort.env.wasm.numThreads = threads;
    ort.env.logLevel = "error";  // int8 graphs: one warning per constant the QDQ fusion leaves unused
    session = await ort.InferenceSession.create(model, {
      executionProviders: ["wasm"], graphOptimizationLevel: "all", logSeverityLevel: 3,
    });
    backend = "wasm";
  }
  return { threads, loadMs: performance.now() - started };
}

function rgbaToNhwc(rgba) {
  const pixels = new Uint8Array(rgba);
  const out = new Uint8Array((pixels.length / 4) * 3);
  for (let i = 0, j = 0; i < pixels.length; i += 4, j += 3) {
    out[j] = pixels[i];
    out[j + 1] = pixels[i + 1];
    out[j + 2] = pixels[i + 2];
  }
  return out;
}

self.onmessage = async (event) => {
  const message = event.data;
  try {
    if (message.type === "init") {
      inputSize = message.inputSize;
      const { threads, loadMs } = await createSession(message.base, message.modelUrl);
      self.postMessage({ type: "ready", backend, threads, loadMs });
    } else if (message.type === "frame") {
      const started = performance.now();
      const input = new ort.Tensor("uint8", rgbaToNhwc(message.rgba), [1, inputSize, inputSize, 3]);
      const outputs = await session.run({ images: input });
      const embedding = Float32Array.from(outputs.embedding.data);
      const logits = Float32Array.from(outputs.logits.data);
      self.postMessage({ type: "result", id: message.id, embedding, logits, inferMs: performance.now() - started },
        [embedding.buffer, logits.buffer]);
    }
  } catch (error) {
    self.postMessage({ type: "error", message: String(error && error.message ? error.message : error) });
  }
};
