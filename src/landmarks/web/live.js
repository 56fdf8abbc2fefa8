// The live page: camera frames at the model's input size -> the inference worker -> kNN over the prototypes
// (scoring.js) -> smoothed answer drawn over the video. Frames stay on the device unless "Ask the server" is tapped.
// window.liveStats exposes frames/s, frame latency (capture to answer) and the load time for benchmarks.

import {
  NO_LANDMARK_NAME, Smoother, applyGeo, haversineKm, loadPrototypes, scoreEmbedding,
} from "./scoring.js";

const SMOOTHING_FRAMES = 5;
const STATS_WINDOW = 120;  // frames kept for the latency percentiles and frames/s

const $ = (id) => document.getElementById(id);
const stats = {
  frames: 0, fps: 0, p50Ms: 0, p95Ms: 0, inferP50Ms: 0, loadMs: null, modelLoadMs: null, firstAnswerMs: null,
  backend: null, threads: null, answer: null, confidence: 0, error: null,
};
window.liveStats = stats;

let manifest = null;
let rule = null;
let prototypes = null;
let prototypeIds = [];
let landmarksById = new Map();
let worker = null;
let where = null;  // {latitude, longitude} once the user shares the location
let current = null;  // the smoothed answer
const smoother = new Smoother(SMOOTHING_FRAMES);
const latencies = [];
const finished = [];
const pending = new Map();

function percentile(values, p) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function status(text) { $("live-status").textContent = text; }

async function fetchChecked(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {  // the service says why (e.g. the run has no model.onnx yet)
    const detail = await response.json().then((body) => body.detail).catch(() => null);
    throw new Error(detail || `${url}: HTTP ${response.status}`);
  }
  return response;
}

// The service builds a run's device model on first need: manifest.json answers 503 {building: true, detail} until it
// is there; the page shows the sentence and asks again. Any other refusal's sentence ends the wait.
async function fetchManifest() {
  for (;;) {
    const response = await fetch("manifest.json", { cache: "no-cache" });
    if (response.ok) return response.json();
    const body = await response.json().catch(() => ({}));
    if (response.status !== 503 || !body.building) throw new Error(body.detail || `manifest.json: HTTP ${response.status}`);
    status(body.detail);
    await new Promise((resolve) => setTimeout(resolve, 1000 * (body.retry_after_s || 3)));
  }
}

async function loadBundle() {
  manifest = await fetchManifest();
  rule = manifest.scoring;
  const landmarks = await (await fetchChecked(manifest.landmarks)).json();
  landmarksById = new Map(landmarks.map((l) => [l.landmark_id, l]));
  const p = manifest.prototypes;
  prototypes = loadPrototypes(await (await fetchChecked(p.file)).arrayBuffer(), p.count, p.dim);
  prototypeIds = p.landmark_ids;
}

function startWorker() {
  return new Promise((resolve, reject) => {
    worker = new Worker("worker.js", { type: "module" });
    worker.onmessage = (event) => {
      const message = event.data;
      if (message.type === "ready") {
        stats.backend = message.backend;
        stats.threads = message.threads;
        stats.modelLoadMs = message.loadMs;
        resolve();
      } else if (message.type === "result") {
        onResult(message);
      } else if (message.type === "error") {
        stats.error = message.message;
        status(`Error: ${message.message}`);
        reject(new Error(message.message));
      }
    };
    worker.onerror = (event) => reject(new Error(event.message || "the worker failed"));
    const base = new URL("./", location.href).href;
    worker.postMessage({ type: "init", base, modelUrl: base + manifest.model.file, inputSize: manifest.model.input_size_px });
  });
}

async function startCamera() {
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: { ideal: "environment" }, width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
  });
  const video = $("camera");
  video.srcObject = stream;
  await video.play();
  while (video.readyState < 2 || !video.videoWidth) await new Promise((r) => setTimeout(r, 20));
}

const frameCanvas = document.createElement("canvas");
let frameContext = null;
let nextId = 0;

function captureFrame() {
  const size = manifest.model.input_size_px;
  if (!frameContext) {
    frameCanvas.width = frameCanvas.height = size;
    frameContext = frameCanvas.getContext("2d", { willReadFrequently: true });
  }
  const started = performance.now();
  frameContext.drawImage($("camera"), 0, 0, size, size);  // the whole frame squashed, as decode_image does
  const rgba = frameContext.getImageData(0, 0, size, size).data.buffer;
  const id = nextId++;
  pending.set(id, started);
  worker.postMessage({ type: "frame", id, rgba }, [rgba]);
}

function onResult(message) {
  const started = pending.get(message.id);
  pending.delete(message.id);
  let answer = scoreEmbedding(message.embedding, message.logits, prototypes, prototypeIds, rule);
  answer = applyGeo(answer, where, landmarksById, manifest.geo.radius_km, rule.threshold);
  smoother.push(answer);
  current = smoother.current(rule.threshold);
  show(current);
  const now = performance.now();
  latencies.push(now - started);
  finished.push(now);
  stats.inferMs = stats.inferMs || [];
  stats.inferMs.push(message.inferMs);
  for (const list of [latencies, finished, stats.inferMs]) if (list.length > STATS_WINDOW) list.shift();
  stats.frames += 1;
  stats.p50Ms = percentile(latencies, 50);
  stats.p95Ms = percentile(latencies, 95);
  stats.inferP50Ms = percentile(stats.inferMs, 50);
  stats.fps = finished.length > 1 ? (1000 * (finished.length - 1)) / (finished[finished.length - 1] - finished[0]) : 0;
  if (stats.firstAnswerMs === null) stats.firstAnswerMs = now;  // ms since navigation started
  $("live-stats").textContent = `${stats.fps.toFixed(1)} frames/s · ${stats.p50Ms.toFixed(0)} ms per frame ` +
    `(p95 ${stats.p95Ms.toFixed(0)} ms) · ${stats.backend}, ${stats.threads} thread(s) · model ${manifest.model.variant}`;
  captureFrame();
}

function show(answer) {
  const label = $("live-label");
  const name = answer.known ? (landmarksById.get(answer.landmark_id)?.name ?? String(answer.landmark_id)) : NO_LANDMARK_NAME;
  $("live-answer").textContent = name;
  $("live-confidence").textContent = answer.known ? `${Math.round(100 * answer.confidence)}%` : "";
  label.classList.toggle("known", answer.known);
  stats.answer = name;
  stats.confidence = answer.confidence;
}

function openInfoCard() {
  if (!current || !current.known) return;
  const info = landmarksById.get(current.landmark_id);
  if (!info) return;
  $("info-name").textContent = info.name;
  $("info-description").hidden = !info.description;
  $("info-description").textContent = info.description || "";
  const hasPlace = info.latitude !== undefined && info.longitude !== undefined;
  $("info-place").textContent = hasPlace ? `${info.latitude.toFixed(4)}, ${info.longitude.toFixed(4)}` : "Location unknown";
  const map = $("info-map");
  map.hidden = !hasPlace;
  if (hasPlace) map.href = `https://www.openstreetmap.org/?mlat=${info.latitude}&mlon=${info.longitude}#map=16/${info.latitude}/${info.longitude}`;
  const link = $("info-link");
  link.hidden = !info.url;
  if (info.url) link.href = info.url;
  const distance = $("info-distance");
  distance.hidden = !(hasPlace && where);
  if (hasPlace && where) {
    const km = haversineKm(where.latitude, where.longitude, info.latitude, info.longitude);
    distance.textContent = km < 1 ? `${Math.round(km * 1000)} m from you` : `${km.toFixed(1)} km from you`;
  }
  $("info-card").hidden = false;
}

function shareLocation() {
  if (!navigator.geolocation) { status("This browser cannot share a location."); return; }
  navigator.geolocation.getCurrentPosition(
    (position) => {
      where = { latitude: position.coords.latitude, longitude: position.coords.longitude };
      $("share-location").textContent = "Location shared";
      smoother.clear();
      if (!$("info-card").hidden) openInfoCard();
    },
    (error) => status(`Location not shared (${error.message}).`),
    { enableHighAccuracy: false, maximumAge: 60000, timeout: 15000 },
  );
}

async function askServer() {
  const video = $("camera");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  const form = new FormData();
  form.append("photo", blob, "live.jpg");
  if (where) { form.append("latitude", String(where.latitude)); form.append("longitude", String(where.longitude)); }
  const answer = $("server-answer");
  answer.hidden = false;
  answer.textContent = "Asking the server…";
  try {
    const response = await fetch(manifest.predict_url, { method: "POST", body: form });
    const body = await response.json();
    answer.textContent = response.ok ? `The server says: ${body.message}` : `The server refused: ${body.detail}`;
  } catch (error) {
    answer.textContent = "The server cannot be reached (recognition on this device goes on).";
  }
}

async function main() {
  await loadBundle();
  if ("serviceWorker" in navigator) {  // offline after this visit; a new bundle (content_hash) gets a new cache
    navigator.serviceWorker.register(`sw.js?v=${manifest.content_hash}`).catch(() => {});
  }
  if (!manifest.runtime.files.length) { status(manifest.runtime.missing); return; }
  $("ask-server").hidden = !manifest.predict_url;
  $("live-label").addEventListener("click", openInfoCard);
  $("info-close").addEventListener("click", () => { $("info-card").hidden = true; });
  $("share-location").addEventListener("click", shareLocation);
  $("ask-server").addEventListener("click", askServer);
  status(manifest.model.too_large ? `Loading the model… ${manifest.model.too_large}` : "Loading the model…");
  await startWorker();
  stats.loadMs = performance.now();  // navigation start -> bundle fetched and the model ready to run
  status("Starting the camera…");
  await startCamera();
  status(`Point the camera at a landmark (${manifest.model.variant} model, ${stats.backend}).`);
  captureFrame();
}

main().catch((error) => {
  stats.error = String(error && error.message ? error.message : error);
  status(`The live page could not start: ${stats.error}`);
});
