// Progressive enhancement only: every page works without this file.
// 1. <time datetime="...Z" data-local> shows the viewer's local time and zone.
// 2. [data-countdown][data-remaining] counts down the seconds left.
// 3. [data-refresh] regions reload themselves from the server every N seconds.
"use strict";
(function () {
  const stamp = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
  const started = performance.now();

  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    return (h ? h + ":" + two(m) : String(m)) + ":" + two(r);
  }

  function tick() {
    const elapsed = (performance.now() - started) / 1000;
    document.querySelectorAll("[data-countdown]").forEach((el) => {
      const left = Number(el.dataset.remaining) - (elapsed - Number(el.dataset.loadedAt || 0));
      el.textContent = left > 0 ? clock(left) + " left" : "time is up";
      el.classList.toggle("urgent", left < 120);
    });
  }

  function enhance(root) {
    const elapsed = (performance.now() - started) / 1000;
    root.querySelectorAll("time[data-local]").forEach((el) => {
      const when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) { el.textContent = stamp.format(when); }
    });
    root.querySelectorAll("[data-countdown]").forEach((el) => { el.dataset.loadedAt = elapsed; });
    document.querySelectorAll("[data-zone]").forEach((el) => {
      el.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "your local zone";
    });
    tick();
  }

  async function refresh(region) {
    if (region.contains(document.activeElement)) { return; } // never wipe what is being typed
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) { return; }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById(region.id);
    if (fresh) { region.replaceChildren(...fresh.childNodes); enhance(region); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    enhance(document);
    setInterval(tick, 1000);
    document.querySelectorAll("[data-refresh][id]").forEach((region) => {
      setInterval(() => refresh(region).catch(() => {}), Number(region.dataset.refresh) * 1000);
    });
  });
})();
