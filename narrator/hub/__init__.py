"""The Hugging Face Hub round trip of ``narrator annotate``: download a dataset before the run
(``--repo-id``, ``--revision``) and upload it after the commit (``--push-to-hub [REPO]``).

* :mod:`narrator.hub.client`: the narrow :class:`~narrator.hub.client.HubClient` interface and
  its one real implementation, the only module that imports ``huggingface_hub`` (lazily);
* :mod:`narrator.hub.card`: the dataset card (pure);
* :mod:`narrator.hub.upload`: which files an upload holds (pure);
* :mod:`narrator.hub.flow`: the steps around them (where to download, the refusal to push a
  dataset that fails validation, the tag LeRobot resolves).
"""
