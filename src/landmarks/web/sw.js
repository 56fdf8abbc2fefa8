// The live page's service worker: after the first visit the bundle (page, model, prototypes, runtime) comes from
// the cache, so the page recognises without the server. manifest.json, landmarks.json and prototypes.bin are
// asked from the network first (the service's references change), the cache answers when it is unreachable.

// The page registers sw.js?v=<manifest.content_hash>: a new bundle installs a new worker with a cache of its own.
const PREFIX = "landmarks-live-";
const CACHE = PREFIX + (new URL(self.location.href).searchParams.get("v") || "0");
const FRESH_FIRST = ["", "index.html", "manifest.json", "landmarks.json", "prototypes.bin"];
const ON_DEMAND = ["ort/ort.webgpu.min.mjs", "ort/ort-wasm-simd-threaded.asyncify.mjs", "ort/ort-wasm-simd-threaded.asyncify.wasm"];

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const manifest = await (await fetch("manifest.json", { cache: "no-cache" })).json();
    const cache = await caches.open(CACHE);
    await cache.addAll(["./", ...manifest.files.filter((name) => !ON_DEMAND.includes(name))]);
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => event.waitUntil((async () => {
  for (const name of await caches.keys()) if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
  await self.clients.claim();
})()));

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const scope = self.registration.scope;
  if (request.method !== "GET" || !request.url.startsWith(scope)) return;
  const name = request.url.slice(scope.length).split("?")[0];
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    if (FRESH_FIRST.includes(name)) {
      try {
        const response = await fetch(request, { cache: "no-cache" });
        if (response.ok) await cache.put(request, response.clone());
        return response;
      } catch (error) {
        const cached = await cache.match(request);
        if (cached) return cached;
        throw error;
      }
    }
    const cached = await cache.match(request, { ignoreSearch: true });
    if (cached) return cached;
    const response = await fetch(request);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  })());
});
