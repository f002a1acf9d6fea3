"""Metrics rows: strict JSON lines and TensorBoard scalars; a resumed run drops what came after its checkpoint."""

import json
import struct

from tensorboardX.proto import event_pb2

from prospr_jax.runtime.metrics import MetricsWriter


def read_scalars(directory):
  """(step, tag, value) of every scalar in the TensorBoard event files of ``directory``, file by file."""
  scalars = []
  for path in sorted(directory.glob('events.out.tfevents.*')):
    data, position = path.read_bytes(), 0
    while position < len(data):
      length = struct.unpack('<Q', data[position:position + 8])[0]
      event = event_pb2.Event.FromString(data[position + 12:position + 12 + length])
      position += 12 + length + 4
      scalars += [(event.step, value.tag, value.simple_value) for value in event.summary.value]
  return scalars


def test_rows_are_json_lines_and_tensorboard_scalars_at_their_step(tmp_path):
  writer = MetricsWriter(tmp_path)
  writer.write({'epoch': 1, 'step': 10, 'eval_top1': 0.5, 'train_loss': float('nan')})
  writer.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(lines[0], parse_constant=lambda c: 1 / 0) == {'epoch': 1, 'step': 10, 'eval_top1': 0.5,
                                                                  'train_loss': None}
  assert read_scalars(tmp_path) == [(10, 'eval_top1', 0.5)]


def test_a_resume_drops_rows_past_the_checkpoint_and_no_checkpoint_drops_all(tmp_path):
  writer = MetricsWriter(tmp_path)
  for epoch in (1, 2, 3):
    writer.write({'epoch': epoch, 'step': 10 * epoch, 'eval_top1': epoch / 10})
  writer.truncate_after(20)
  assert [row['step'] for row in writer.rows()] == [10, 20]
  writer.truncate_after(0)
  assert writer.rows() == []
  writer.close()


def test_a_row_is_in_the_tensorboard_files_when_write_returns_before_any_close(tmp_path):
  """The epoch's checkpoint is saved right after ``write``: a kill then must not lose the epoch's events."""
  writer = MetricsWriter(tmp_path)
  writer.truncate_after(0)
  writer.write({'epoch': 1, 'step': 10, 'eval_top1': 0.5})
  assert (10, 'eval_top1', 0.5) in read_scalars(tmp_path)
  writer.close()

