(function(){
  // Sort (click or Enter on a header: numbers high-to-low first, text A-Z; again to reverse; blanks last) and
  // filter (rows whose text or hover text holds every word typed: a defense, an attack, an arch). Inline and
  // dependency-free, so the page works offline.
  var MISSING = '\u2014';
  function key(td){
    if(!td) return null;
    var v = td.getAttribute('data-v'), t = v !== null ? v : td.textContent.trim();
    if(t === '' || t === MISSING) return null;
    return /^-?\d+(\.\d+)?$/.test(t) ? parseFloat(t) : t.toLowerCase();
  }
  function sortBy(th){
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.some(function(r){ return typeof key(r.cells[col]) === 'number'; });
    var now = th.getAttribute('aria-sort');
    var dir = now ? (now === 'ascending' ? -1 : 1) : (numeric ? -1 : 1);
    Array.prototype.forEach.call(th.parentNode.cells, function(c){ c.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    rows.sort(function(a, b){
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if(x === null || y === null) return (x === null) - (y === null);
      if(typeof x !== typeof y) return typeof x === 'number' ? -1 : 1;
      return dir * (typeof x === 'number' ? x - y : x.localeCompare(y));
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  document.querySelectorAll('thead th').forEach(function(th){
    th.tabIndex = 0;
    th.title = 'sort by this column (click again to reverse)';
    th.addEventListener('click', function(){ sortBy(th); });
    th.addEventListener('keydown', function(e){
      if(e.key === 'Enter' || e.key === ' '){ e.preventDefault(); sortBy(th); }
    });
  });
  var box = document.getElementById('filter'), count = document.getElementById('count');
  function haystack(tr){
    var text = tr.textContent;
    Array.prototype.forEach.call(tr.cells, function(c){ text += ' ' + (c.getAttribute('title') || ''); });
    return text.toLowerCase();
  }
  function filter(){
    var words = box.value.toLowerCase().split(/\s+/).filter(Boolean), shown = 0, total = 0;
    document.querySelectorAll('tbody tr').forEach(function(tr){
      var text = haystack(tr);
      var keep = words.every(function(w){ return text.indexOf(w) >= 0; });
      tr.hidden = !keep; total += 1; shown += keep ? 1 : 0;
    });
    count.textContent = words.length ? shown + ' of ' + total + ' rows' : '';
  }
  box.addEventListener('input', filter);
  filter();
})();
