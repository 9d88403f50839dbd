// The demo page: send the chosen photo to POST /api/enhance and show the answer beside the original.
// Everything a visitor chooses stays in this tab (blob: URLs); the server keeps nothing.
"use strict";

const $ = (id) => document.getElementById(id);
const maxUploadBytes = Number($("demo").dataset.maxUploadBytes);
const objectUrls = {};  // element id -> the blob: URL it shows, revoked when replaced
let source = null;      // {blob, name}: the photo on show, a local file or a sample
let inFlight = null;    // AbortController of the request running now; a newer request aborts it
const UNREACHABLE = "The server could not be reached: is python demo/app.py still running?";

function showBlob(id, blob) {
  if (objectUrls[id]) URL.revokeObjectURL(objectUrls[id]);
  objectUrls[id] = URL.createObjectURL(blob);
  $(id).src = objectUrls[id];
  return objectUrls[id];
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  $("result").hidden = true;
  setStatus("");
}

async function errorMessage(response) {
  try {
    return (await response.json()).error;
  } catch {
    return `The server answered ${response.status} ${response.statusText}.`;
  }
}

async function enhance() {
  if (!source) return;
  if (inFlight) inFlight.abort();
  const request = new AbortController();
  inFlight = request;
  const scale = $("scale").value;
  const strength = Number($("strength").value).toFixed(2);
  const params = new URLSearchParams({scale_factor: scale, strength, name: source.name});
  $("error").hidden = true;
  setStatus(`Enhancing ${source.name}…`);
  const started = performance.now();
  try {
    const response = await fetch(`/api/enhance?${params}`, {
      method: "POST", body: source.blob, signal: request.signal,
      headers: {"Content-Type": "application/octet-stream"},
    });
    if (!response.ok) {
      const message = await errorMessage(response);
      if (inFlight === request) showError(message);
      return;
    }
    const result = await response.blob();
    const url = showBlob("enhanced", result);
    await $("enhanced").decode();
    if (inFlight !== request) return;  // a newer request has taken over the page
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const {naturalWidth: w, naturalHeight: h} = $("enhanced");
    $("download").href = url;
    $("download").download = `${source.name.replace(/\.[^.]*$/, "")}_sgz.png`;
    $("info").textContent = `${w} × ${h} px · scale factor ${scale} · brightness ${strength} · ${seconds} s`;
    $("result").hidden = false;
    // A format the browser cannot show (TIFF) is still enhanced; only the "before" side stays empty.
    const originalShown = await $("original").decode().then(() => true, () => false);
    setStatus(originalShown ? `Done: ${source.name} enhanced.`
      : `Done. This browser cannot display ${source.name}, so the slider shows the enhanced image only.`);
  } catch (e) {
    if (inFlight === request && e.name !== "AbortError") {
      showError(UNREACHABLE);
    }
  } finally {
    if (inFlight === request) inFlight = null;
  }
}

function choose(blob, name) {
  if (blob.size > maxUploadBytes) {
    showError(`${name} is ${(blob.size / 1e6).toFixed(1)} MB; this demo accepts up to ${maxUploadBytes / 1e6} MB.`);
    return;
  }
  source = {blob, name};
  showBlob("original", blob);
  enhance();
}

async function chooseSample(button) {
  try {
    const response = await fetch(`/api/samples/${button.dataset.sample}`);
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    choose(await response.blob(), button.title);
  } catch {
    showError(UNREACHABLE);
  }
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) choose(file, file.name);
});

const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = e.dataTransfer.files[0];
  if (file) choose(file, file.name);
});

for (const button of document.querySelectorAll("button.sample")) {
  button.addEventListener("click", () => chooseSample(button));
}

$("scale").addEventListener("change", enhance);
$("strength").addEventListener("input", () => {
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
});
$("strength").addEventListener("change", enhance);

$("divider").addEventListener("input", () => {
  $("compare").style.setProperty("--pos", `${$("divider").value}%`);
});
