"""Speech data: the built-in synthetic corpus (corpus, synth, lexicon), manifests, loaders
(manifest, librispeech) and batching. Import the submodules; this package imports nothing
so that the synthesis server stays small."""
