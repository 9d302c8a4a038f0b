// resume() on real pusher-js (oldest and newest 8.x claimed) against a scripted server: each
// test plays the server's side of a reconnect and checks what pusher-js sent and what the
// application's handlers saw.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { resume } from '@turnout/pusher-resume';

import {
  PUSHER_VERSIONS,
  connected,
  pusherOptions,
  recordEvents,
  waitFor,
} from './support/clients.mjs';
import { startScriptedServer } from './support/scripted-server.mjs';

/** A scripted server and a pusher-js instance on it, torn down after the test. */
async function setup(t, Pusher, extraOptions = {}) {
  const server = await startScriptedServer();
  const pusher = new Pusher('app-key', pusherOptions(server.port, extraOptions));
  t.after(async () => {
    pusher.disconnect();
    await server.close();
  });
  return { server, pusher };
}

const ids = (seen) => seen.map(([, data]) => data.id);

/** Subscribe fresh on `conn` at (start, epoch) and send events ids first..last (= offsets). */
async function freshWithEvents(conn, channel, epoch, first, last, start = first - 1) {
  const data = await conn.subscription(channel);
  assert.equal(data.offset, undefined, 'a first subscribe carries no position');
  assert.equal(data.epoch, undefined);
  conn.subscribed(channel, { offset: start, epoch });
  for (let id = first; id <= last; id += 1) conn.event(channel, 'update', { id }, [id, epoch]);
}

for (const { name, Pusher } of PUSHER_VERSIONS) {
  describe(name, () => {
    test('after a 4200 close (a drained node) it resubscribes from its last event and the replay is delivered once', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 3, 0);
      await waitFor(() => seen.length === 3, 'three live events');
      assert.deepEqual(handle.position('results'), { offset: 3, epoch: 'e1' });

      await first.close(4200, 'draining');
      const second = await server.nextConnection();
      const data = await second.subscription('results');
      assert.deepEqual([data.offset, data.epoch], [3, 'e1']);
      second.subscribed('results', { offset: 5, epoch: 'e1', recovered: true });
      second.event('results', 'update', { id: 4 }, [4, 'e1']); // replay
      second.event('results', 'update', { id: 5 }, [5, 'e1']);
      second.event('results', 'update', { id: 6 }, [6, 'e1']); // live
      await waitFor(() => seen.length >= 6, 'the replay and a live event');
      assert.deepEqual(ids(seen), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(handle.stats(), {
        delivered: 6, duplicatesDropped: 0, resumes: 1, recovered: 1, gaps: 0, epochChanges: 0,
      });
    });

    test('a connection lost mid-replay resumes from the last replayed event, not from the replay\'s end', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 3, 0);
      await waitFor(() => seen.length === 3, 'three live events');
      await first.close(4200);

      const second = await server.nextConnection();
      assert.equal((await second.subscription('results')).offset, 3);
      second.subscribed('results', { offset: 8, epoch: 'e1', recovered: true });
      second.event('results', 'update', { id: 4 }, [4, 'e1']);
      second.event('results', 'update', { id: 5 }, [5, 'e1']);
      await waitFor(() => seen.length === 5, 'two replayed events');
      await second.kill(); // a node killed halfway through the replay: no close frame

      const third = await server.nextConnection(5000);
      const data = await third.subscription('results');
      assert.deepEqual([data.offset, data.epoch], [5, 'e1']);
      third.subscribed('results', { offset: 8, epoch: 'e1', recovered: true });
      for (const id of [6, 7, 8]) third.event('results', 'update', { id }, [id, 'e1']);
      await waitFor(() => seen.length >= 8, 'the rest of the replay');
      assert.deepEqual(ids(seen), [1, 2, 3, 4, 5, 6, 7, 8]);
      assert.equal(handle.stats().resumes, 2);
    });

    test('duplicates across a reconnect are dropped by position before the application sees them', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 3, 0);
      await waitFor(() => seen.length === 3, 'three live events');
      await first.close(4200);

      const second = await server.nextConnection();
      assert.equal((await second.subscription('results')).offset, 3);
      second.subscribed('results', { offset: 4, epoch: 'e1', recovered: true });
      // An overlapping replay: 2 and 3 were already processed.
      for (const id of [2, 3, 4, 4, 5]) second.event('results', 'update', { id }, [id, 'e1']);
      await waitFor(() => seen.length >= 5, 'the new events');
      await new Promise((resolve) => setTimeout(resolve, 50)); // nothing else may trickle in
      assert.deepEqual(ids(seen), [1, 2, 3, 4, 5]);
      assert.equal(handle.stats().duplicatesDropped, 3);
    });

    test('recovered: false is told to the application: channel, positions and the size of the gap', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const fromOption = [];
      const handle = resume(pusher, { onGap: (gap) => fromOption.push(gap) });
      const fromHandle = [];
      handle.on('gap', (gap) => fromHandle.push(gap));
      const channel = pusher.subscribe('results');
      const fromChannel = [];
      channel.bind('turnout:gap', (gap) => fromChannel.push({ gap, subscribed: channel.subscribed }));
      const seen = recordEvents(channel);
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 3, 0);
      await waitFor(() => seen.length === 3, 'three live events');
      await first.close(4200);

      const second = await server.nextConnection();
      assert.equal((await second.subscription('results')).offset, 3);
      second.subscribed('results', { offset: 10, epoch: 'e1', recovered: false });
      second.event('results', 'update', { id: 11 }, [11, 'e1']);
      await waitFor(() => seen.length >= 5, 'the gap event and a live event');

      const expected = {
        channel: 'results', reason: 'not_recoverable',
        from: { offset: 3, epoch: 'e1' }, to: { offset: 10, epoch: 'e1' }, missed: 7,
      };
      assert.deepEqual(fromOption, [expected]);
      assert.deepEqual(fromHandle, [expected]);
      // On the channel, after pusher-js has marked it subscribed again.
      assert.deepEqual(fromChannel, [{ gap: expected, subscribed: true }]);
      assert.deepEqual(seen.map(([event]) => event), ['update', 'update', 'update', 'turnout:gap', 'update']);
      assert.deepEqual(handle.position('results'), { offset: 11, epoch: 'e1' });
      assert.equal(handle.stats().gaps, 1);

      // The next resume starts from after the gap.
      await second.close(4200);
      const third = await server.nextConnection();
      const data = await third.subscription('results');
      assert.deepEqual([data.offset, data.epoch], [11, 'e1']);
    });

    test('epoch changes are followed: live, and as a recovered: false gap of unknown size', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const gaps = [];
      handle.on('gap', (gap) => gaps.push(gap));
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 3, 0);
      // The channel's history is reset while subscribed: offsets start again at 1.
      first.event('results', 'update', { id: 'e2-1' }, [1, 'e2']);
      first.event('results', 'update', { id: 'e2-2' }, [2, 'e2']);
      await waitFor(() => seen.length === 5, 'five events');
      assert.deepEqual(ids(seen), [1, 2, 3, 'e2-1', 'e2-2']);
      assert.equal(handle.stats().epochChanges, 1);
      await first.close(4200);

      const second = await server.nextConnection();
      const data = await second.subscription('results');
      assert.deepEqual([data.offset, data.epoch], [2, 'e2']);
      // Redis lost the channel while we were away: yet another epoch.
      second.subscribed('results', { offset: 4, epoch: 'e3', recovered: false });
      second.event('results', 'update', { id: 'e3-5' }, [5, 'e3']);
      await waitFor(() => seen.length >= 6, 'the live event');
      assert.deepEqual(gaps, [{
        channel: 'results', reason: 'epoch_changed',
        from: { offset: 2, epoch: 'e2' }, to: { offset: 4, epoch: 'e3' }, missed: null,
      }]);
      assert.deepEqual(ids(seen.filter(([event]) => event === 'update')),
        [1, 2, 3, 'e2-1', 'e2-2', 'e3-5']);
    });

    test('a channel with no epoch yet (epoch null) resumes with "" and adopts the epoch it gets', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const seen = recordEvents(pusher.subscribe('fresh'));
      const first = await server.nextConnection();
      await first.subscription('fresh');
      first.subscribed('fresh', { offset: 0, epoch: null });
      await waitFor(() => handle.position('fresh') !== undefined, 'a position');
      assert.deepEqual(handle.position('fresh'), { offset: 0, epoch: '' });
      await first.close(4200);

      const second = await server.nextConnection();
      const data = await second.subscription('fresh');
      assert.deepEqual([data.offset, data.epoch], [0, '']);
      second.subscribed('fresh', { offset: 2, epoch: 'e9', recovered: true });
      second.event('fresh', 'update', { id: 1 }, [1, 'e9']);
      second.event('fresh', 'update', { id: 1 }, [1, 'e9']); // duplicate
      second.event('fresh', 'update', { id: 2 }, [2, 'e9']);
      await waitFor(() => seen.length >= 2, 'the replay');
      await new Promise((resolve) => setTimeout(resolve, 30));
      assert.deepEqual(ids(seen), [1, 2]);
      assert.deepEqual(handle.position('fresh'), { offset: 2, epoch: 'e9' });
    });

    test('a private channel is authorized again for the new socket and resumes with its position', async (t) => {
      const authorized = [];
      const customHandler = ({ socketId, channelName }, callback) => {
        authorized.push({ socketId, channelName });
        setTimeout(() => callback(null, { auth: `app-key:signed-${socketId}` }), 5);
      };
      const { server, pusher } = await setup(t, Pusher, { channelAuthorization: { customHandler } });
      resume(pusher);
      const seen = recordEvents(pusher.subscribe('private-orders'));
      const first = await server.nextConnection();
      const data1 = await first.subscription('private-orders');
      assert.equal(data1.auth, `app-key:signed-${first.socketId}`);
      assert.equal(data1.offset, undefined);
      first.subscribed('private-orders', { offset: 7, epoch: 'p1' });
      first.event('private-orders', 'update', { id: 8 }, [8, 'p1']);
      await waitFor(() => seen.length === 1, 'one event');
      await first.close(4200);

      const second = await server.nextConnection();
      const data2 = await second.subscription('private-orders');
      assert.equal(data2.auth, `app-key:signed-${second.socketId}`);
      assert.deepEqual([data2.offset, data2.epoch], [8, 'p1']);
      assert.deepEqual(authorized, [
        { socketId: first.socketId, channelName: 'private-orders' },
        { socketId: second.socketId, channelName: 'private-orders' },
      ]);
      second.subscribed('private-orders', { offset: 9, epoch: 'p1', recovered: true });
      second.event('private-orders', 'update', { id: 9 }, [9, 'p1']);
      await waitFor(() => seen.length === 2, 'the replayed event');
      assert.deepEqual(ids(seen), [8, 9]);
    });

    test('a pong timeout reconnects and resumes too', async (t) => {
      // pusher-js pings after activityTimeout of silence and gives up after pongTimeout.
      const { server, pusher } = await setup(t, Pusher, { activityTimeout: 300, pongTimeout: 300 });
      resume(pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      first.answerPings = false;
      await freshWithEvents(first, 'results', 'e1', 1, 2, 0);
      await waitFor(() => seen.length === 2, 'two events');
      const second = await server.nextConnection(5000);
      assert.ok(first.received.some((m) => m.event === 'pusher:ping'), 'pusher-js pinged');
      const data = await second.subscription('results');
      assert.deepEqual([data.offset, data.epoch], [2, 'e1']);
    });

    test('several channels keep separate positions', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      resume(pusher);
      const a = recordEvents(pusher.subscribe('a'));
      const b = recordEvents(pusher.subscribe('b'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'a', 'ea', 1, 4, 0);
      await freshWithEvents(first, 'b', 'eb', 11, 12, 10);
      await waitFor(() => a.length === 4 && b.length === 2, 'both channels');
      await first.close(4200);
      const second = await server.nextConnection();
      const [da, db] = [await second.subscription('a'), await second.subscription('b')];
      assert.deepEqual([da.offset, da.epoch, db.offset, db.epoch], [4, 'ea', 12, 'eb']);
    });

    test('unsubscribing forgets the position: a later subscribe starts fresh', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 2, 0);
      await waitFor(() => seen.length === 2, 'two events');
      pusher.unsubscribe('results');
      await first.next('pusher:unsubscribe');
      assert.equal(handle.position('results'), undefined);
      pusher.subscribe('results');
      const data = await first.subscription('results');
      assert.equal(data.offset, undefined);
    });

    test('against a server without positions (plain Pusher) it changes nothing', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await first.subscription('results');
      first.subscribed('results');
      first.event('results', 'update', { id: 1 }, null);
      first.event('results', 'update', { id: 1 }, null); // no position: not ours to judge
      await waitFor(() => seen.length === 2, 'two events');
      await first.close(4200);
      const second = await server.nextConnection();
      const data = await second.subscription('results');
      assert.equal(data.offset, undefined);
      assert.equal(handle.positions().size, 0);
    });

    test('applied after the connection is up, it tracks from the next event', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 1, 0);
      await waitFor(() => seen.length === 1, 'one event');
      await connected(pusher);
      const handle = resume(pusher);
      assert.equal(resume(pusher), handle, 'a second resume() returns the same handle');
      first.event('results', 'update', { id: 2 }, [2, 'e1']);
      await waitFor(() => seen.length === 2, 'the next event');
      await first.close(4200);
      const second = await server.nextConnection();
      assert.equal((await second.subscription('results')).offset, 2);
    });

    test('the delivery listener sees each event with its position, after the app\'s handlers', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const handle = resume(pusher);
      const order = [];
      pusher.subscribe('results').bind('update', (data) => order.push(['app', data.id]));
      handle.on('delivery', (d) => order.push(['delivery', d.channel, d.event, d.offset, d.epoch]));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 2, 0);
      await waitFor(() => order.length === 4, 'two events, twice');
      assert.deepEqual(order, [
        ['app', 1], ['delivery', 'results', 'update', 1, 'e1'],
        ['app', 2], ['delivery', 'results', 'update', 2, 'e1'],
      ]);
    });

    test('detach() undoes everything: the next subscribe carries no position', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const sendEvent = pusher.send_event;
      const handle = resume(pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 1, 0);
      await waitFor(() => seen.length === 1, 'one event');
      handle.detach();
      assert.equal(pusher.send_event, sendEvent);
      first.event('results', 'update', { id: 1 }, [1, 'e1']); // a duplicate now passes
      await waitFor(() => seen.length === 2, 'the duplicate');
      await first.close(4200);
      const second = await server.nextConnection();
      assert.equal((await second.subscription('results')).offset, undefined);
    });

    test('control: pusher-js alone resubscribes without a position (what the plugin fixes)', async (t) => {
      const { server, pusher } = await setup(t, Pusher);
      const seen = recordEvents(pusher.subscribe('results'));
      const first = await server.nextConnection();
      await freshWithEvents(first, 'results', 'e1', 1, 3, 0);
      await waitFor(() => seen.length === 3, 'three events');
      await first.close(4200);
      const second = await server.nextConnection();
      const data = await second.subscription('results');
      assert.equal(data.offset, undefined);
      second.subscribed('results', { offset: 3, epoch: 'e1' });
      // And duplicates reach the application.
      second.event('results', 'update', { id: 3 }, [3, 'e1']);
      await waitFor(() => seen.length === 4, 'the duplicate');
      assert.deepEqual(ids(seen), [1, 2, 3, 3]);
    });
  });
}

test('resume() refuses what is neither pusher-js nor Echo with a pusher connector', () => {
  assert.throws(() => resume({}), /pusher-js 8 instance or a Laravel Echo 2 instance/);
  assert.throws(() => resume({ connector: { socket: {} } }), /broadcaster/);
});
