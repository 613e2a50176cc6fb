"""Reading LeRobot v3 datasets: one role per module, the I/O in :mod:`.reader` and the
modules that read other parts of a dataset (language rows, embedded images, frame sizes).

=================  ==========================================================================
``files``          where the metadata files are (relative paths)
``meta``           the value types (DatasetMeta, Episode, EpisodeFrames, CameraInfo) and the
                   rules of ``meta/info.json`` (pure)
``schema``         Arrow schema checks: column kinds, existing language columns (pure)
``layout``         how episodes lie in data files, one episode's rows checked (pure)
``fingerprint``    the dataset fingerprint (what identifies a run's dataset)
``reader``         loads a dataset's metadata and frame columns: the I/O shell of the above
``language``       the language rows of an annotated shard (render, report, the writer)
``images``         embedded camera images (``dtype: image``), only the rows asked for
``frame_sizes``    the size of frames as stored, and where it differs from info.json
=================  ==========================================================================

Nothing here writes to a dataset; every problem is a :class:`~common.errors.DatasetError`
that names the file, the problem and what to do. Import from the module that defines a
name (there are no re-exports).
"""
