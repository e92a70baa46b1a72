"""Scale-out: score over many devices/processes (:mod:`.workers`), several servers (:mod:`.openai_pool`), Ray nodes."""
