// ast3stream portal: live night table, operator token remembered in this browser.
document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("night-table");
  if (live) {
    const every = 1000 * parseFloat(live.dataset.refresh || "5");
    setInterval(async () => {
      try {
        const r = await fetch(live.dataset.src, {cache: "no-store"});
        if (r.ok) live.innerHTML = await r.text();  // server-rendered and escaped
      } catch (e) { /* the portal restarts: try again next time */ }
    }, every);
  }
  const saved = sessionStorage.getItem("ast3-token") || "";
  for (const input of document.querySelectorAll("form.op input[name=token]")) {
    if (saved) input.value = saved;
    input.form.addEventListener("submit", () => sessionStorage.setItem("ast3-token", input.value));
  }
});
