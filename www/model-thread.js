// The model thread (worker.js) as calls that return promises: each message carries an id, and the
// worker's answer (or error) settles the call with that id.

export class ModelThread {
  // `onProgress` gets the worker's download progress; `onFailure` a worker that could not start.
  constructor({ onProgress, onFailure }) {
    this.onProgress = onProgress;
    this.onFailure = onFailure;
    this.worker = null;
    this.nextId = 1;
    this.pending = new Map();
  }

  // A fresh worker (the old one, if any, is stopped and its calls fail), initialised with `init`.
  start(init) {
    this.worker?.terminate();
    for (const { reject } of this.pending.values()) reject(new Error('the model restarted'));
    this.pending.clear();
    const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = ({ data }) => this.receive(data);
    worker.onerror = (event) => {
      event.preventDefault();
      this.onFailure(event.message || 'the browser gave no reason');
    };
    this.worker = worker;
    return this.call({ type: 'init', ...init });
  }

  call(message, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }

  receive(data) {
    if (data.type === 'progress') return this.onProgress(data);
    const pending = this.pending.get(data.id);
    if (!pending) return;
    this.pending.delete(data.id);
    if (data.type === 'error') {
      const error = new Error(data.message);
      Object.assign(error, { stage: data.stage, kind: data.kind, fatal: data.fatal, lost: data.lost });
      pending.reject(error);
    } else {
      pending.resolve(data);
    }
  }
}
