// sluice ui: sortable tables, mapped-task groups, and a running run's updates.
// No framework; every page works without it (groups then open with their rows hidden).
(function () {
  "use strict";

  function cellValue(row, index) {
    const cell = row.cells[index];
    if (!cell) return "";
    const value = cell.getAttribute("data-value");
    if (value !== null && value !== "" && !isNaN(Number(value))) return Number(value);
    return cell.textContent.trim().toLowerCase();
  }

  // A table's rows in blocks: a row with the member rows that follow it.
  function blocks(tbody) {
    const out = [];
    for (const row of Array.from(tbody.rows)) {
      if (row.classList.contains("member") && out.length) out[out.length - 1].push(row);
      else out.push([row]);
    }
    return out;
  }

  function sortBy(table, index, th) {
    const ascending = !th.classList.contains("sorted-asc");
    for (const other of table.tHead.rows[0].cells) other.classList.remove("sorted-asc", "sorted-desc");
    th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
    for (const tbody of table.tBodies) {
      const sorted = blocks(tbody).sort(function (a, b) {
        const x = cellValue(a[0], index), y = cellValue(b[0], index);
        const order = x < y ? -1 : x > y ? 1 : 0;
        return ascending ? order : -order;
      });
      for (const block of sorted) for (const row of block) tbody.appendChild(row);
    }
  }

  function wire(root) {
    for (const table of root.querySelectorAll("table.sortable")) {
      const head = table.tHead && table.tHead.rows[0];
      if (!head) continue;
      Array.from(head.cells).forEach(function (th, index) {
        th.addEventListener("click", function () { sortBy(table, index, th); });
      });
    }
    for (const button of root.querySelectorAll("button.toggle")) {
      button.addEventListener("click", function () {
        const group = button.getAttribute("data-group");
        const open = button.textContent === "▾";
        button.textContent = open ? "▸" : "▾";
        for (const row of root.querySelectorAll('tr.member[data-group="' + group + '"]')) row.hidden = open;
      });
    }
  }

  // A running run's page follows it: fetch the page again every 2 s and swap the main
  // part in when it changed, keeping the scroll position; stop once it has ended.
  function follow() {
    const main = document.getElementById("main");
    if (!main || main.getAttribute("data-live") !== "true") return;
    let last = main.innerHTML;
    const timer = setInterval(async function () {
      try {
        const response = await fetch(location.href, { headers: { "accept": "text/html" } });
        if (!response.ok) return;
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.getElementById("main");
        if (!fresh) return;
        if (fresh.innerHTML !== last) {
          last = fresh.innerHTML;
          main.innerHTML = fresh.innerHTML;
          wire(main);
        }
        if (fresh.getAttribute("data-live") !== "true") {
          main.setAttribute("data-live", "false");
          clearInterval(timer);
        }
      } catch (e) { /* the server restarting: try again at the next tick */ }
    }, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () { wire(document); follow(); });
})();
