// PositionTracker alone: the decisions, frame by frame, without pusher-js.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PositionTracker } from '../dist/esm/tracker.js';

const ev = (channel, offset, epoch) => ({ event: 'update', channel, data: '{}', offset, epoch });
const ok = (channel, fields) => ({ event: 'pusher_internal:subscription_succeeded', channel, data: '{}', ...fields });

test('fresh subscription, then events: positions follow; older and equal offsets are duplicates', () => {
  const tracker = new PositionTracker();
  assert.equal(tracker.onSubscribe('c'), undefined);
  assert.deepEqual(tracker.onFrame(ok('c', { offset: 10, epoch: 'e' })), { deliver: true });
  assert.deepEqual(tracker.position('c'), { offset: 10, epoch: 'e' });
  assert.equal(tracker.onFrame(ev('c', 11, 'e')).deliver, true);
  assert.deepEqual(tracker.onFrame(ev('c', 11, 'e')), { deliver: false, reason: 'duplicate' });
  assert.equal(tracker.onFrame(ev('c', 9, 'e')).deliver, false);
  // A skipped offset (socket_id exclusion) is not a duplicate and not a gap.
  assert.equal(tracker.onFrame(ev('c', 13, 'e')).deliver, true);
  assert.deepEqual(tracker.position('c'), { offset: 13, epoch: 'e' });
  assert.deepEqual(tracker.stats, {
    delivered: 2, duplicatesDropped: 2, resumes: 0, recovered: 0, gaps: 0, epochChanges: 0,
  });
});

test('a resume answered recovered: true keeps the position; the replay advances it', () => {
  const tracker = new PositionTracker();
  tracker.onFrame(ev('c', 5, 'e'));
  assert.deepEqual(tracker.onSubscribe('c'), { offset: 5, epoch: 'e' });
  assert.deepEqual(tracker.onFrame(ok('c', { offset: 8, epoch: 'e', recovered: true })), { deliver: true });
  assert.deepEqual(tracker.position('c'), { offset: 5, epoch: 'e' });
  tracker.onFrame(ev('c', 6, 'e'));
  assert.deepEqual(tracker.position('c'), { offset: 6, epoch: 'e' });
  assert.equal(tracker.stats.recovered, 1);
});

test('recovered: false yields a gap and moves the position to the new start', () => {
  const tracker = new PositionTracker();
  tracker.onFrame(ev('c', 5, 'e'));
  tracker.onSubscribe('c');
  const verdict = tracker.onFrame(ok('c', { offset: 20, epoch: 'e', recovered: false }));
  assert.deepEqual(verdict, { deliver: true, gap: {
    channel: 'c', reason: 'not_recoverable', from: { offset: 5, epoch: 'e' },
    to: { offset: 20, epoch: 'e' }, missed: 15 } });
  assert.deepEqual(tracker.position('c'), { offset: 20, epoch: 'e' });
});

test('recovered: false from epoch "" is a gap of unknown size', () => {
  const tracker = new PositionTracker();
  tracker.onFrame(ok('c', { offset: 0, epoch: null }));
  tracker.onSubscribe('c');
  const { gap } = tracker.onFrame(ok('c', { offset: 4, epoch: 'x', recovered: false }));
  assert.deepEqual([gap.reason, gap.missed], ['not_recoverable', null]);
});

test('an answer to a subscribe sent before a disconnect is not taken for a resume', () => {
  const tracker = new PositionTracker();
  tracker.onFrame(ev('c', 5, 'e'));
  tracker.onSubscribe('c');
  tracker.onDisconnect();
  // A fresh-looking answer (recovered absent): the position becomes its start.
  assert.deepEqual(tracker.onFrame(ok('c', { offset: 7, epoch: 'e', recovered: false })), { deliver: true });
  assert.equal(tracker.stats.gaps, 0);
});

test('frames that are not sequenced channel events pass untouched', () => {
  const tracker = new PositionTracker();
  for (const frame of [null, 'text', 42, {}, { event: 'pusher:pong', data: '{}' },
    { event: 'update', channel: 'c', data: '{}' }, { event: 'update', channel: 'c', offset: '1', epoch: 'e' },
    { event: 'pusher_internal:subscription_count', channel: 'c', data: '{}' }]) {
    assert.deepEqual(tracker.onFrame(frame), { deliver: true }, JSON.stringify(frame));
  }
  assert.equal(tracker.snapshot().size, 0);
});
