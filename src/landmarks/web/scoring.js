// Scoring on the device: the same rule as landmarks.recognize.recognizer.Recognizer.score, over the prototypes
// of manifest.json (kNN with cosine similarity), then the run's calibration and the geo prior
// (landmarks.recognize.geo). Pure functions: the page, the worker and the tests (node) import them.

export const NO_LANDMARK = -1;
export const NO_LANDMARK_NAME = "no known landmark";

/** Whether an answer is given as a known landmark (landmarks.recognize.confidence.is_known, the one rule). */
export function isKnown(confidence, threshold) {
  return confidence >= threshold;
}

/** float16 bits (Uint16Array) -> Float32Array. */
export function float16ToFloat32(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    if (exponent === 0) out[i] = sign * Math.pow(2, -14) * (fraction / 1024);
    else if (exponent === 31) out[i] = fraction ? NaN : sign * Infinity;
    else out[i] = sign * Math.pow(2, exponent - 15) * (1 + fraction / 1024);
  }
  return out;
}

/** Prototypes from prototypes.bin (float16, count x dim), each row L2-normalised again. */
export function loadPrototypes(buffer, count, dim) {
  const vectors = float16ToFloat32(new Uint16Array(buffer, 0, count * dim));
  for (let row = 0; row < count; row++) {
    let norm = 0;
    for (let j = 0; j < dim; j++) norm += vectors[row * dim + j] ** 2;
    norm = Math.max(Math.sqrt(norm), 1e-12);
    for (let j = 0; j < dim; j++) vectors[row * dim + j] /= norm;
  }
  return vectors;
}

function classifierScores(logits, rule) {
  if (!logits || !logits.length) return new Float32Array(0);
  const out = new Float32Array(logits.length);
  if (rule.classifier === "cosine") {
    for (let i = 0; i < logits.length; i++) out[i] = Math.min(1, Math.max(0, logits[i] / rule.logit_scale));
    return out;
  }
  let max = -Infinity;
  for (const value of logits) max = Math.max(max, value);
  let total = 0;
  for (let i = 0; i < logits.length; i++) { out[i] = Math.exp(logits[i] - max); total += out[i]; }
  for (let i = 0; i < logits.length; i++) out[i] /= total;
  return out;
}

/**
 * Taught landmarks (no classifier column): landmark id -> cosine of the embedding's first neck_dims values,
 * normalised, to the nearest of its imprinted centres, in [0, 1] (landmarks.recognize.centres.centre_scores).
 */
export function taughtScores(embedding, centres) {
  const out = new Map();
  if (!centres || !centres.rows || !centres.rows.length) return out;
  const dims = centres.neck_dims;
  if (embedding.length < dims) return out;
  let norm = 0;
  for (let j = 0; j < dims; j++) norm += embedding[j] ** 2;
  norm = Math.max(Math.sqrt(norm), 1e-12);
  centres.rows.forEach((row, r) => {
    let dot = 0;
    for (let j = 0; j < dims; j++) dot += row[j] * embedding[j];
    const score = Math.min(1, Math.max(0, dot / norm));
    const id = centres.landmark_ids[r];
    out.set(id, Math.max(out.has(id) ? out.get(id) : 0, score));
  });
  return out;
}

const sigmoid = (z) => 0.5 * (1 + Math.tanh(0.5 * z));

function interp(x, xs, ys) {
  if (x <= xs[0]) return ys[0];
  if (x >= xs[xs.length - 1]) return ys[ys.length - 1];
  let i = 1;
  while (xs[i] < x) i++;
  const t = (x - xs[i - 1]) / (xs[i] - xs[i - 1] || 1);
  return ys[i - 1] + t * (ys[i] - ys[i - 1]);
}

const ISOTONIC_TILT = 1e-3;

/** landmarks.recognize.calibration.Calibration.map_scores for monotone methods. */
export function mapScore(score, calibration) {
  if (!calibration || calibration.method === "none") return Math.min(1, Math.max(0, score));
  const p = calibration.parameters;
  if (calibration.method === "platt") return sigmoid(p.slope * score + p.intercept);
  if (calibration.method === "isotonic") {
    return (1 - ISOTONIC_TILT) * interp(score, p.x, p.y) + ISOTONIC_TILT * Math.min(1, Math.max(0, score));
  }
  return score;
}

function gateProbability(features, p) {
  let z = p.bias;
  for (let i = 0; i < features.length; i++) z += ((features[i] - p.mean[i]) / p.scale[i]) * p.weights[i];
  return sigmoid(z);
}

/**
 * One photo's answer: {landmark_id, confidence, known, candidates: [{landmark_id, score}]}.
 * embedding: Float32Array(dim), L2-normalised; logits: Float32Array(classes) or empty;
 * prototypes: Float32Array(count * dim); prototypeIds: landmark id of each prototype; rule: manifest.scoring.
 */
export function scoreEmbedding(embedding, logits, prototypes, prototypeIds, rule) {
  const dim = embedding.length;
  const count = prototypeIds.length;
  const probabilities = classifierScores(logits, rule);
  const weight = count ? rule.knn_weight : 0;
  const k = Math.min(count, Math.max(rule.knn_k, rule.show_neighbours || 0));
  const similarities = new Float32Array(count);
  for (let row = 0; row < count; row++) {
    let dot = 0;
    const base = row * dim;
    for (let j = 0; j < dim; j++) dot += prototypes[base + j] * embedding[j];
    similarities[row] = dot;
  }
  const order = Array.from(similarities.keys()).sort((a, b) => similarities[b] - similarities[a]).slice(0, k);
  const knn = new Map();
  let nonLandmarkSimilarity = -1;
  for (const position of order.slice(0, rule.knn_k)) {
    const id = prototypeIds[position];
    const similarity = similarities[position];
    if (id === NO_LANDMARK) { nonLandmarkSimilarity = Math.max(nonLandmarkSimilarity, similarity); continue; }
    knn.set(id, Math.max(knn.has(id) ? knn.get(id) : -1, similarity));
  }
  const candidateIds = new Set(knn.keys());
  const columnOf = new Map(rule.class_landmark_ids.map((id, column) => [id, column]));
  if (probabilities.length) {
    const classes = Array.from(probabilities.keys()).sort((a, b) => probabilities[b] - probabilities[a]);
    for (const column of classes.slice(0, rule.top_k)) candidateIds.add(rule.class_landmark_ids[column]);
  }
  const taught = taughtScores(embedding, rule.taught_centres);
  const taughtIds = Array.from(taught.keys()).sort((a, b) => taught.get(b) - taught.get(a) || a - b);
  for (const id of taughtIds.slice(0, rule.top_k)) candidateIds.add(id);
  const scores = [];
  for (const id of candidateIds) {
    const knnScore = Math.max(0, knn.has(id) ? knn.get(id) : 0);
    const column = columnOf.get(id);
    const classifierScore = column !== undefined && probabilities.length ? probabilities[column]
      : taught.has(id) ? taught.get(id) : knnScore;
    let fused = weight * knnScore + (1 - weight) * classifierScore;
    if (nonLandmarkSimilarity > 0) {
      fused -= rule.non_landmark_penalty * Math.max(0, nonLandmarkSimilarity - (knn.has(id) ? knn.get(id) : 0));
    }
    scores.push({ landmark_id: id, score: Math.min(1, Math.max(0, fused)) });
  }
  scores.sort((a, b) => b.score - a.score || a.landmark_id - b.landmark_id);
  const candidates = scores.slice(0, rule.top_k);
  let best = candidates[0] || { landmark_id: NO_LANDMARK, score: 0 };
  let confidence = best.score;
  const calibration = rule.calibration;
  // answers naming a landmark the classifier does not know use the calibration's taught map when it has one
  const isTaught = (id) => columnOf.size > 0 && !columnOf.has(id) && id >= 0;
  const mapOf = (id) => (calibration && calibration.taught && isTaught(id) ? calibration.taught : calibration);
  if (calibration && calibration.method === "gate") {
    const neighbours = order.slice(0, rule.show_neighbours || 0);
    const agreement = neighbours.length
      ? neighbours.filter((p) => prototypeIds[p] === best.landmark_id).length / neighbours.length : 0;
    const nearest = (id) => Math.max(0, ...neighbours.filter((p) => prototypeIds[p] === id).map((p) => similarities[p]));
    const second = candidates.length > 1 ? candidates[1].score : 0;
    const features = {  // landmarks.recognize.calibration.prediction_features, by name
      score: best.score, margin: best.score - second, agreement,
      non_landmark_similarity: nearest(NO_LANDMARK), knn_similarity: nearest(best.landmark_id),
    };
    const values = calibration.features.map((name) => {
      if (!(name in features)) throw new Error(`the page does not know the calibration feature ${name}`);
      return features[name];
    });
    confidence = gateProbability(values, mapOf(best.landmark_id).parameters);
    if (candidates.length) candidates[0] = { ...candidates[0], score: confidence };
  } else if (calibration) {
    for (const candidate of candidates) candidate.score = mapScore(candidate.score, mapOf(candidate.landmark_id));
    if (calibration.taught) {
      candidates.sort((a, b) => b.score - a.score || a.landmark_id - b.landmark_id);
      if (candidates.length) best = candidates[0];
    }
    confidence = candidates.length ? candidates[0].score : 0;
  }
  return { landmark_id: best.landmark_id, confidence, known: isKnown(confidence, rule.threshold), candidates };
}

/** Great-circle distance in km (landmarks.recognize.geo.haversine_km). */
export function haversineKm(lat1, lon1, lat2, lon2) {
  const rad = Math.PI / 180;
  const a = Math.sin(((lat2 - lat1) * rad) / 2) ** 2
    + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(((lon2 - lon1) * rad) / 2) ** 2;
  return 2 * 6371.0088 * Math.asin(Math.min(1, Math.sqrt(a)));
}

/** The geo prior's factor (landmarks.recognize.geo.geo_factor): 1 within radiusKm, exp(-(d - r) / r) beyond. */
export function geoFactor(distanceKm, radiusKm) {
  if (!(radiusKm > 0) || distanceKm === null || distanceKm === undefined || distanceKm <= radiusKm) return 1;
  return Math.exp(-(distanceKm - radiusKm) / radiusKm);
}

/** Candidates re-scored by the geo prior when both the user's and a landmark's coordinates are known. */
export function applyGeo(answer, where, landmarksById, radiusKm, threshold) {
  if (!where || !(radiusKm > 0)) return answer;
  const candidates = answer.candidates.map((c) => {
    const info = landmarksById.get(c.landmark_id);
    if (!info || info.latitude === undefined || info.longitude === undefined) return c;
    const d = haversineKm(where.latitude, where.longitude, info.latitude, info.longitude);
    return { ...c, score: c.score * geoFactor(d, radiusKm) };
  });
  candidates.sort((a, b) => b.score - a.score || a.landmark_id - b.landmark_id);
  const best = candidates[0] || { landmark_id: NO_LANDMARK, score: 0 };
  return { landmark_id: best.landmark_id, confidence: best.score, known: isKnown(best.score, threshold), candidates };
}

/** Averages each landmark's score over the last `size` frames, so that the label does not flicker. */
export class Smoother {
  constructor(size = 5) { this.size = size; this.frames = []; }

  push(answer) {
    const scores = new Map(answer.candidates.map((c) => [c.landmark_id, c.score]));
    this.frames.push(scores);
    if (this.frames.length > this.size) this.frames.shift();
  }

  /** {landmark_id, confidence, known} of the best average over the frames kept (missing = 0). */
  current(threshold) {
    const totals = new Map();
    for (const frame of this.frames) for (const [id, score] of frame) totals.set(id, (totals.get(id) || 0) + score);
    let best = { landmark_id: NO_LANDMARK, confidence: 0 };
    for (const [id, total] of totals) {
      const mean = total / this.frames.length;
      if (mean > best.confidence || (mean === best.confidence && id < best.landmark_id)) best = { landmark_id: id, confidence: mean };
    }
    return { ...best, known: this.frames.length > 0 && isKnown(best.confidence, threshold) };
  }

  clear() { this.frames = []; }
}
